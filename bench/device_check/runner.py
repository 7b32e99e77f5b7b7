"""Checks that record what they measured and never pass silently.

A check is a function of a ``Probe``: it records figures and states requirements. It fails when
a requirement is unmet, when it raises (the exception becomes its message), or when it stated
no requirement at all, so a check that forgot to test anything cannot read as ok. A group's
checks come from a generator, which may hold a resource (a running stack) across its checks
and release it in a ``finally``; every check runs even after others failed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.report import write_report

Figure = float | int | str | bool | None


class Probe:
    """What one check hands back: its figures and its unmet requirements."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.problems: list[str] = []
        self.requirements = 0

    def record(self, **figures: Figure) -> None:
        self.figures.update(figures)

    def require(self, condition: bool, what: str) -> None:
        """``what`` says what must hold; it becomes the failure message when it does not."""
        self.requirements += 1
        if not condition:
            self.problems.append(what)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Probe], None]


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    seconds: float
    figures: dict[str, Figure]
    problems: list[str]


@dataclasses.dataclass(frozen=True)
class Group:
    title: str
    checks: Callable[[], Iterable[Check]]


def run_check(check: Check) -> Result:
    probe = Probe()
    started = time.perf_counter()
    try:
        check.run(probe)
    except Exception as exc:  # a crashing check is a failed check, and the run goes on
        probe.problems.append(f"{type(exc).__name__}: {exc}")
    if probe.requirements == 0 and not probe.problems:
        probe.problems.append("checked nothing")
    elapsed = time.perf_counter() - started
    return Result(check.name, not probe.problems, elapsed, probe.figures, probe.problems)


def run_group(group: Group) -> Iterator[Result]:
    """Every check of the group; a failure to set the group up is a failed check too."""
    try:
        for check in group.checks():
            yield run_check(check)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        yield Result("(set-up/tear-down)", False, 0.0, {}, [problem])


def execute(groups: Sequence[Group], output: Path, header: dict[str, Any], console: Console) -> int:
    """Run every group, print a table per group, write the JSON report; 1 if anything failed.

    The report is rewritten after each group ("complete" false until the end), and each check
    prints a line as it ends, so a run killed at its time limit still says how far it got.
    """
    report: dict[str, Any] = {**header, "complete": False, "ok": False, "groups": {}}
    all_ok = True
    for group in groups:
        console.rule(group.title)
        results: list[Result] = []
        for result in run_group(group):
            console.print(
                f"{'ok' if result.ok else 'FAILED'}: {result.name} ({result.seconds:.1f} s)"
            )
            results.append(result)
            all_ok &= result.ok
        console.print(table(group.title, results))
        report["groups"][group.title] = [dataclasses.asdict(r) for r in results]
        write_report(output, report, console)
    report.update(complete=True, ok=all_ok)
    write_report(output, report, console)
    console.print("[bold green]all checks ok" if all_ok else "[bold red]some checks FAILED")
    return 0 if all_ok else 1


def table(title: str, results: list[Result]) -> Table:
    out = Table(title=title, show_lines=True)
    for column in ("check", "status", "s", "figures", "problems"):
        out.add_column(column, overflow="fold")
    for r in results:
        status = "[green]ok" if r.ok else "[bold red]FAILED"
        figures = "  ".join(f"{k}={_format(v)}" for k, v in r.figures.items() if v is not None)
        out.add_row(r.name, status, f"{r.seconds:.1f}", figures, "; ".join(r.problems))
    return out


def _format(value: Figure) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
