"""The `autoglm` command: bundle init/import/memory, quantize, internal-token, serve <service>, up.

Every service is configured the same way: its frozen dataclass config becomes the flags
(``services.common.config``). Heavy imports happen only for the subcommand that runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from bundle.layout import SERVED_MODEL_NAME
from bundle.presets import BUNDLE_PRESETS
from services.common.config import add_config_args, config_from_args

# service -> (module.Class of its config, module.function that runs it)
SERVICES: dict[str, tuple[str, str]] = {
    "vision": ("services.vision.config:VisionConfig", "services.encoder.server:run"),
    "audio": ("services.audio.config:AudioConfig", "services.encoder.server:run"),
    "decoder": ("services.decoder.config:DecoderConfig", "services.decoder.server:run"),
    "gateway": ("gateway.config:GatewayConfig", "gateway.app:run"),
}
LAUNCHER = ("services.launcher:LauncherConfig", "services.launcher:run")


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _add_config_command(
    subparsers: Any, name: str, target: tuple[str, str], help_text: str
) -> None:
    parser = subparsers.add_parser(name, help=help_text)
    add_config_args(parser, _load(target[0]))
    parser.set_defaults(target=target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    bundle = commands.add_parser("bundle", help="model bundles")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    init = bundle_commands.add_parser("init", help="build a bundle with seeded random weights")
    init.add_argument("path", nargs="?", default="models/default")
    init.add_argument("--preset", choices=BUNDLE_PRESETS, default="default")
    init.add_argument("--force", action="store_true", help="rebuild even if the bundle exists")
    init.set_defaults(run="bundle.init:cli")
    imports = bundle_commands.add_parser(
        "import", help="serve a Hugging Face checkpoint (GLM-4.1V or GLM-4) without copying it"
    )
    imports.add_argument("checkpoint", help="the checkpoint folder (config.json, safetensors...)")
    imports.add_argument(
        "bundle", nargs="?", default=None,
        help="where bundle.json goes: the checkpoint folder (default) or a folder holding it",
    )  # fmt: skip
    imports.add_argument("--served-model-name", default=SERVED_MODEL_NAME)
    imports.set_defaults(run="bundle.hf_import:cli")
    memory = bundle_commands.add_parser(
        "memory", help="each service's weight memory (FP16 and as served) from the config"
    )
    memory.add_argument("path", help="a bundle, or a Hugging Face checkpoint folder")
    memory.add_argument("--context-tokens", type=int, default=32768, help="for the KV cache line")
    memory.set_defaults(run="bundle.memory:cli")

    token = commands.add_parser(
        "internal-token", help="write a random internal gRPC token file (0600) unless it exists"
    )
    token.add_argument("path")
    token.set_defaults(run="services.common.auth:cli")

    quantize = commands.add_parser("quantize", help="GPTQ-quantize a bundle's decoder")
    _load("quantize.cli:add_arguments")(quantize)
    quantize.set_defaults(run="quantize.cli:cli")

    # Config modules are plain dataclasses (no torch, no fastapi), so building every
    # subcommand's flags stays cheap; the service itself is imported only when it runs.
    serve = commands.add_parser("serve", help="run one service")
    services = serve.add_subparsers(dest="service", required=True)
    for name, target in SERVICES.items():
        _add_config_command(services, name, target, f"the {name} service")
    _add_config_command(commands, "up", LAUNCHER, "start the whole stack and wait")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if hasattr(args, "target"):
        try:
            config = config_from_args(_load(args.target[0]), args)
        except ValueError as exc:
            print(f"autoglm: invalid configuration: {exc}", file=sys.stderr)
            return 2
        return int(_load(args.target[1])(config) or 0)
    return int(_load(args.run)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
