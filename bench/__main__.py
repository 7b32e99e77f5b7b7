"""`python -m bench` (`make bench`): every benchmark in turn, each with its default settings.

Run one alone with `python -m bench.decode`, `bench.prefix`, `bench.constrained`, `bench.serve`
or `bench.quant` (each takes --help).
"""

from __future__ import annotations

import sys

from bench import constrained, decode, prefix, quant, serve


def main() -> int:
    status = 0
    for bench in (decode, prefix, constrained, serve, quant):
        status |= bench.main([])
    return status


if __name__ == "__main__":
    sys.exit(main())
