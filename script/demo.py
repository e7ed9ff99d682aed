"""The README's demo: optimize a sample image into a local registry and show what happened.

Starts the real docker-registry on a free 127.0.0.1 port, builds a small image offline (Debian's
busybox-static plus a shell app that reads some of its files), runs `ctr-remote image optimize`
on it, and shows the result with `ctr-remote image check`: per layer, the prioritized files, the landmark,
the bytes prefetched and the sizes, every chunk verified. Everything is removed at the end.
"""

from __future__ import annotations

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

        cli = [sys.executable, "-m", "ctr_remote"]
        cmd = [
            *cli,
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

        src = [f"   layer {i}: {layer.desc.digest[:19]}  {layer.desc.size:>9} bytes before" for i, layer in
               enumerate(image.layers)]  # fmt: skip
        check = [*cli, "image", "check", "--plain-http", "--list-prioritized", f"http://{reg.host}/demo:esgz"]
        say(f"\n== {shlex.join(['ctr-remote', *check[3:]])}")
        run = subprocess.run(check, capture_output=True, text=True)
        for line in (run.stdout + run.stderr).splitlines():
            say(f"   | {line}")
        say("\n".join(["", "== the source layers, for comparison:", *src]))
        say()
        say("At start-up the stargz snapshotter prefetches each layer's first `prefetch` bytes in one")
        say("request; the workload then runs without fetching anything else. Registry and temp files are")
        say("removed now.")
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
