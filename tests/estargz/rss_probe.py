"""`python -m tests.estargz.rss_probe MIB LEVEL`: convert a synthetic layer of MIB MiB, generated
while it is read (never stored), and print `seconds peak_rss_kib` of this process (VmHWM: unlike
ru_maxrss, it does not count the RSS of the process that forked this one before exec).

The layer (files of 1..16 MiB, an eighth random and the rest text, and small files) comes from a forked
generator through a pipe, so the converting process' peak RSS is its own.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time

from ctr_remote.estargz import BuildOptions, build


def _generate(out: io.BufferedWriter, total: int) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        left, i = total, 0
        while left > 0:
            n = min(left, (1 + i % 16) << 20) if i % 4 else 4096
            data = os.urandom(n // 8) + (b"line %08d of text\n" % i) * (n * 7 // 8 // 23)
            ti = tarfile.TarInfo(f"data/{i // 100}/f{i}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
            left -= len(data)
            i += 1


def main(mib: int, level: int) -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            with os.fdopen(w, "wb") as out:
                _generate(out, mib << 20)
        finally:
            os._exit(0)
    os.close(w)
    started = time.perf_counter()
    with os.fdopen(r, "rb") as src, open(os.devnull, "wb") as dst:
        build(src, dst, BuildOptions(compression_level=level))
    os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.2f} {peak_rss_kib()}")


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
