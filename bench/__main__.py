"""Run every benchmark and print ratios against upstream."""

import sys


def main() -> int:
    print("no benchmarks yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
