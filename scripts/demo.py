"""The README's demo: optimize a sample image into a local registry and show what happened.

Starts the real docker-registry on a free 127.0.0.1 port, builds a small image offline (Debian's
busybox-static plus a shell app that reads some of its files), runs `ctr-remote image optimize`
on it, and prints, per layer, the prioritized files, the landmark and the sizes before and after,
as the upstream Go eStargz reader (estargz-check) sees them. Everything is removed at the end.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctr_remote.image import open_store  # noqa: E402
from ctr_remote.log import configure  # noqa: E402
from tests.helpers.registry import start_registry  # noqa: E402
from tests.helpers.sample import app_layers, publish, runnable_image  # noqa: E402

ORACLE = ROOT / "build" / "estargz-check"


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    configure()
    with (
        tempfile.TemporaryDirectory(prefix="ctr-remote-demo-") as tmp,
        start_registry(Path(tmp) / "reg") as reg,
    ):
        say(f"== a local registry on {reg.host}")
        image = runnable_image(app_layers())
        with open_store(reg.reference("demo:src"), reg.options()) as store:
            publish(store, image, Path(tmp) / "push")
        say(f"== the sample image {reg.ref('demo:src')}: busybox-static + a shell app (/app/run.sh)")
        for i, layer in enumerate(image.layers):
            say(f"   layer {i}: {layer.desc.digest[:19]}  {layer.desc.size:>9} bytes (gzip)")

        cmd = [
            sys.executable,
            "-m",
            "ctr_remote",
            "image",
            "optimize",
            "--plain-http",
            "--period",
            "10",
            reg.ref("demo:src"),
            reg.ref("demo:esgz"),
        ]
        say(f"\n== ctr-remote image optimize --plain-http {reg.ref('demo:src')} {reg.ref('demo:esgz')}")
        run = subprocess.run(cmd, capture_output=True, text=True)
        for line in (run.stdout + run.stderr).splitlines():
            say(f"   | {line}")
        if run.returncode != 0:
            say("demo: optimize failed")
            return 1

        check = subprocess.run(
            [str(ORACLE), "image", f"{reg.host}/demo:esgz", "--strict"], capture_output=True, text=True
        )
        say(
            f"\n== {shlex.join([ORACLE.name, 'image', reg.host + '/demo:esgz', '--strict'])}: "
            f"{'PASS' if check.returncode == 0 else 'FAIL ' + check.stderr.strip()}"
        )
        report = json.loads(check.stdout)
        for i, (before, after) in enumerate(zip(image.layers, report["manifests"][0]["layers"], strict=True)):
            blob = after["blob"]
            files = [p for p in blob["prioritized"] or [] if not p.endswith("/")]
            say(
                f"   layer {i}: {before.desc.size:>9} -> {after['size']:>9} bytes, landmark "
                f"{blob['landmark']}, prefetch {blob['prefetch_bytes']} bytes"
            )
            for p in files:
                say(f"       prioritized: {p}")
        say()
        say("At start-up the stargz snapshotter prefetches each layer's first `prefetch` bytes in one")
        say("request; the workload then runs without fetching anything else. Registry and temp files are")
        say("removed now.")
        return 0 if check.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
