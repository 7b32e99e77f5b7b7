"""Who may call the internal gRPC services: a shared bearer token, and TLS/mTLS as an option.

The token travels in gRPC metadata as ``authorization: Bearer <token>``. Every service checks it
with a server interceptor (constant-time compare); the gateway's channels add it with a client
interceptor, which works on plaintext channels too (gRPC's own call credentials refuse to travel
without TLS). ``grpc.health.v1`` stays open so that kubelet, compose and `autoglm up` can probe
without the secret, and so does server reflection when it is turned on (it only describes the
public protos). The token comes from a file, never from the command line, where ``ps`` shows it.
With no token file the check is off, as vLLM and TGI run without a key unless given one; a
service that then listens beyond loopback says so in its log.

TLS uses grpc's own credentials: a certificate and key make a server speak TLS, and a CA on the
server makes it require client certificates signed by that CA (mTLS). On the gateway the same
three settings are its client side: the CA it trusts, and its own certificate for mTLS.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from services.common.config import ServiceConfig
from services.common.interceptor import HandlerInterceptor

log = logging.getLogger(__name__)

HEADER = "authorization"
REFUSED = "missing or invalid internal token"


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace dropped); a clear exit when unusable."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        message = f"autoglm: cannot read the internal token file {path}: {exc.strerror}"
        raise SystemExit(message) from None
    if not token:
        raise SystemExit(f"autoglm: the internal token file {path} is empty")
    return token


def write_token_file(path: Path) -> bool:
    """Write a random token to ``path``, readable by its owner only, unless the file exists.
    True when it wrote one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return True


@contextmanager
def token_file(given: Path | None) -> Iterator[Path]:
    """``given``, or else a new token in a directory only the user can enter, removed at the
    end: what `autoglm up` hands its processes (a path, never the token on a command line)."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="autoglm-token-") as directory:
        path = Path(directory) / "internal-token"
        write_token_file(path)
        yield path


def cli(args: argparse.Namespace) -> int:
    """`autoglm internal-token PATH`: the compose init step that makes the shared secret."""
    path = Path(args.path)
    wrote = write_token_file(path)
    print(f"{'wrote a new' if wrote else 'kept the existing'} internal token in {path}")
    return 0


def _service_of(method: str) -> str:
    """``/autoglm.v1.Decoder/Generate`` -> ``autoglm.v1.Decoder``."""
    return method.split("/")[1] if method.count("/") == 2 else ""


class TokenCheck(HandlerInterceptor):
    """Refuses every call without the token with UNAUTHENTICATED, except to ``open_services``.
    A refused call's request is never deserialized."""

    def __init__(self, token: str, open_services: Sequence[str]) -> None:
        self._expected = f"Bearer {token}".encode()
        self._open = frozenset(open_services)

    def replace(
        self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        if _service_of(details.method) in self._open:
            return handler
        sent = [v for k, v in details.invocation_metadata or () if k == HEADER]
        given = sent[0] if len(sent) == 1 and isinstance(sent[0], str) else ""
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        return _refusal(handler, details.method)


def _refusal(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(), REFUSED)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)

    # The refusal has the handler's shape (unary or streaming) but no deserializer.
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


def open_services(config: ServiceConfig) -> tuple[str, ...]:
    """What answers without the token: health always, reflection when it is on."""
    if config.enable_reflection:
        return (health.SERVICE_NAME, reflection.SERVICE_NAME)
    return (health.SERVICE_NAME,)


def server_interceptors(config: ServiceConfig) -> list[grpc.aio.ServerInterceptor]:
    """The caller check a service installs first, or none when no token file is set."""
    if config.internal_token_file is None:
        return []
    return [TokenCheck(read_token(config.internal_token_file), open_services(config))]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen(server: grpc.aio.Server, config: ServiceConfig) -> int:
    """Add the service's port, with TLS when a certificate is configured; the bound port."""
    if config.internal_token_file is None and not _is_loopback(config.host):
        log.warning(
            "listening on %s without an internal token: anyone who reaches this address "
            "can call the service (set --internal-token-file)",
            config.host,
        )
    if config.internal_tls_cert is None:
        if config.internal_tls_ca is not None:
            raise SystemExit("autoglm: --internal-tls-ca needs --internal-tls-cert and -key")
        return server.add_insecure_port(config.address)
    assert config.internal_tls_key is not None  # the config checks they come together
    ca = config.internal_tls_ca
    credentials = grpc.ssl_server_credentials(
        [(config.internal_tls_key.read_bytes(), config.internal_tls_cert.read_bytes())],
        root_certificates=ca.read_bytes() if ca is not None else None,
        require_client_auth=ca is not None,
    )
    return server.add_secure_port(config.address, credentials)


def _with_token(details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), (HEADER, f"Bearer {token}"))
    return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]


# A channel files each interceptor under its first matching kind only: one class per kind.
class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._token), request)


def internal_channel(
    target: str, config: ServiceConfig, options: Sequence[tuple[str, Any]]
) -> grpc.aio.Channel:
    """A channel to an internal service that sends the token and speaks TLS as configured."""
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if config.internal_token_file is not None:
        token = read_token(config.internal_token_file)
        interceptors += [_UnaryToken(token), _StreamToken(token)]
    if config.internal_tls_ca is None and config.internal_tls_cert is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    cert, key, ca = config.internal_tls_cert, config.internal_tls_key, config.internal_tls_ca
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca is not None else None,
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
