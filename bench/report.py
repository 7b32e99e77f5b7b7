"""What every benchmark shares: its common flags, and its JSON with the machine it ran on."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.table import Table

RESULTS = Path("bench/results")


class BenchParser(argparse.ArgumentParser):
    """The flags every benchmark takes (--bundle, --quick, --device, --output); the benchmark
    adds its own. --quick is a short run: the settings in ``quick`` replace whatever the command
    line or the defaults gave them. The report goes to bench/results/NAME.json by default."""

    def __init__(
        self,
        name: str,
        doc: str,
        quick: dict[str, Any],
        bundle_help: str = "a bench bundle (default: build one)",
        device_help: str = "cpu, cuda or cuda:N",
    ) -> None:
        super().__init__(description=doc.splitlines()[0])
        self.quick = quick
        short = ", ".join(_as_flag(key, value) for key, value in quick.items())
        self.add_argument("--bundle", type=Path, help=bundle_help)
        self.add_argument("--quick", action="store_true", help=f"a short run: {short}")
        self.add_argument("--device", default="cpu", help=device_help)
        self.add_argument("--output", type=Path, default=RESULTS / f"{name}.json")

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        args = self.parse_args(argv)
        if args.quick:
            vars(args).update(self.quick)
        return args


def _as_flag(key: str, value: Any) -> str:
    """How a setting is written on the command line: ``--no-minilm``, ``--concurrency 1 2``."""
    flag = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_report(path: Path, report: dict[str, Any], console: Console, ok: bool = True) -> int:
    """Write the report; the exit status says whether its own checks held (0) or not (1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "machine": machine()}, indent=2) + "\n")
    console.print(f"wrote {path}")
    return 0 if ok else 1


def results_table(title: str, columns: Sequence[str], left: int = 0, **options: Any) -> Table:
    """A benchmark's table of results: a rule under the header, the first ``left`` columns
    (names) left-aligned and the rest (figures) right-aligned; ``options`` go to rich's Table."""
    table = Table(box=box.SIMPLE_HEAD, title=title, **options)
    for number, column in enumerate(columns):
        table.add_column(column, justify="left" if number < left else "right")
    return table
