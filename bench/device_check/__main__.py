"""`python -m bench.device_check`: build or take a bundle, run the three groups, report."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import bitsandbytes
import torch
from rich.console import Console

from bench.bundles import prepared_bundle
from bench.device_check.kernels import kernel_checks
from bench.device_check.runner import Group, execute
from bench.device_check.serving import serving_checks
from bench.device_check.stack import stack_checks
from services.common.device import resolve_device

DEFAULT_OUTPUT = Path("bench/results/device_check.json")


def header(device: torch.device, bundle: Path, repeats: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "bitsandbytes": bitsandbytes.__version__,
        "bundle": str(bundle),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda:0" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda:N (default: cuda:0 when there is a GPU)",
    )
    parser.add_argument("--bundle", type=Path, help="default: build one in a temporary folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per kernel figure")
    parser.add_argument("--skip-stack", action="store_true", help="no `autoglm up` processes")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        parser.error(str(exc))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    console = Console()
    with prepared_bundle(args.bundle, console) as bundle:
        groups = [
            Group("kernels", partial(kernel_checks, device, args.repeats)),
            Group("serving in process", partial(serving_checks, bundle, device)),
        ]
        if not args.skip_stack:
            log = args.output.with_name(f"{args.output.stem}-up.log")
            groups.append(
                Group("stack: autoglm up", partial(stack_checks, bundle, str(device), log))
            )
        return execute(groups, args.output, header(device, bundle, args.repeats), console)


if __name__ == "__main__":
    sys.exit(main())
