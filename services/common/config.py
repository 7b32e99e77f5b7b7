"""The shared config base and the one place where configs are built from flags and variables.

Each service has one frozen dataclass on ``ServiceConfig``. Its fields become ``--flags`` whose
defaults are the dataclass defaults; ``AUTOGLM_*`` variables (declared in ``services.common.env``)
sit between the two. Checks live in ``__post_init__`` so a bad value fails at start-up, not on
the first request.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from services.common import env

C = TypeVar("C", bound="ServiceConfig")
T = TypeVar("T")
N = TypeVar("N", int, float)

DEFAULT_BUNDLE = Path("models/default")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """What every process shares: where the bundle is, where to listen, which device."""

    ENV_PREFIX: ClassVar[str] = ""

    bundle: Path = DEFAULT_BUNDLE
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "auto"
    max_message_mb: int = 256
    log_level: str = "info"
    # Between the gateway and the model services (services.common.auth): a gRPC service checks
    # callers for the token and serves TLS with the certificate; the gateway sends the token and
    # trusts the CA. Paths, so that no secret is ever on a command line. (`setting` is defined
    # below this class, so these fields spell out its field.)
    internal_token_file: Path | None = dataclasses.field(
        default=None,
        metadata={"help": "file holding the shared internal gRPC token; unset: no check"},
    )
    internal_tls_cert: Path | None = dataclasses.field(
        default=None, metadata={"help": "PEM certificate (chain) for internal gRPC TLS"}
    )
    internal_tls_key: Path | None = dataclasses.field(
        default=None, metadata={"help": "PEM private key of --internal-tls-cert"}
    )
    internal_tls_ca: Path | None = dataclasses.field(
        default=None,
        metadata={
            "help": "PEM CA: a server requires client certificates it signed (mTLS), "
            "a client verifies servers with it"
        },
    )
    enable_reflection: bool = dataclasses.field(
        default=False, metadata={"help": "gRPC server reflection (grpcurl), without the token"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_mb < 1:
            raise ValueError("max_message_mb must be at least 1")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"unknown log level {self.log_level!r}")
        if self.device != "auto" and self.device != "cpu" and not _is_cuda_device(self.device):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if (self.internal_tls_cert is None) != (self.internal_tls_key is None):
            raise ValueError("internal_tls_cert and internal_tls_key go together")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("positive") and value <= 0:
                raise ValueError(f"{f.name} must be positive, got {value}")
            if f.metadata.get("zero_ok") and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def setting(default: T, text: str, *, name: str = "") -> T:
    """A config field: its default, its --help line and, when users know the setting by another
    name than the field's (``--quant`` for ``quantization``), that name: its --flag and variable."""
    metadata = {"help": text, "name": name} if name else {"help": text}
    return typing.cast(T, dataclasses.field(default=default, metadata=metadata))


def limit(default: N, text: str, *, zero_ok: bool = False) -> N:
    """A setting that must be positive (a size, a count, a time), or with ``zero_ok`` at least 0
    (0 meaning none or off): ``ServiceConfig`` checks every field made here."""
    metadata = {"help": text, "zero_ok" if zero_ok else "positive": True}
    return typing.cast(N, dataclasses.field(default=default, metadata=metadata))


def _public_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("name", f.name))


def _is_cuda_device(device: str) -> bool:
    if device == "cuda":
        return True
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types, resolved once: resolving evaluates every annotation (they
    are strings here), and the flags and the config are built field by field."""
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> Any:
    hint = _type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def _parse(kind: Any, raw: str) -> Any:
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return kind(raw)


def _parser_for(kind: Any) -> Callable[[str], Any]:
    return lambda raw: _parse(kind, raw)


def add_config_args(parser: argparse.ArgumentParser, cls: type[ServiceConfig]) -> None:
    """One --flag per field; flags default to None so an unset flag falls through to env."""
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f.name)
        public = _public_name(f)
        default = f.default
        if default is dataclasses.MISSING:
            default = f.default_factory()  # type: ignore[misc,operator]
        var = env.declared_name(cls.ENV_PREFIX, public)
        shown = ",".join(default) if isinstance(default, tuple) else default
        described = f.metadata.get("help", "")
        described = f"{described} (default: {shown}" + (f"; env {var})" if var else ")")
        # dest is the field; the flag and its metavar keep the name users know
        flag = "--" + public.replace("_", "-")
        if kind is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                dest=f.name,
                default=None,
                help=described,
            )
        else:
            parser.add_argument(
                flag,
                type=_parser_for(kind),
                dest=f.name,
                metavar=public.upper(),
                default=None,
                help=described,
            )


def config_from_args(
    cls: type[C], args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> C:
    """Flag, else declared AUTOGLM_* variable, else the dataclass default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
            continue
        found = env.lookup(cls.ENV_PREFIX, _public_name(f), environ)
        if found is not None:
            name, raw = found
            try:
                values[f.name] = _parse(_field_type(cls, f.name), raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from None
    return cls(**values)
