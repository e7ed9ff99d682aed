"""The janitor of one run (`python -m ctr_remote.janitor RECORD`): waits for its stdin, a pipe from the
run, to close; if the run's record is still there then, the run died without cleaning up (SIGKILL,
the OOM killer) and the janitor removes what the record lists. See ctr_remote.runstate."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    # Its own session already; a hangup or a stray Ctrl-C must not stop it halfway either.
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    record = Path(argv[1])
    while sys.stdin.buffer.read(65536):
        pass
    if not record.exists():  # the run cleaned up after itself
        return 0
    from ctr_remote.runstate import sweep_record

    sweep_record(record, wait=True, owner_gone=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
