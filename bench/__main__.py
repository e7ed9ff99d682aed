"""`make bench`: run every `bench/bench_*.py` (each has `main() -> None` printing its results and
ratios against the upstream Go tool). `python -m bench NAME` runs one."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [n for n in names if not argv or n.removeprefix("bench_") in argv or n in argv]
    if not wanted:
        print(f"no benchmark matches {argv}; have: {', '.join(names) or 'none'}", file=sys.stderr)
        return 2
    for name in wanted:
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
