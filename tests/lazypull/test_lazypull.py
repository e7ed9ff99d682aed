"""The real lazy pull of an image that OUR `optimize` wrote: upstream `ctr-remote image rpull` into
containerd with the real stargz snapshotter, which prefetches exactly the prioritized range of each
layer; the same workload then runs without a single registry request, and a file it never read is
fetched on demand."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests.conftest import Oracle
from tests.helpers.sample import app_layers
from tests.lazypull.app import publish_app
from tests.lazypull.stack import StargzStack

# Incompressible and far bigger than what the snapshotter reads with a layer's footer and TOC, so
# that reading it later needs the registry.
COLD = random.Random(5).randbytes(4 << 20)
COLD_PATH = "app/cold.bin"


def test_lazy_pull_of_our_image(stack: StargzStack, workdir: Path, oracle: Oracle) -> None:
    layers = app_layers()
    layers[2].file(COLD_PATH, COLD)
    run = publish_app(stack, workdir, layers).optimize(
        f"http://{stack.ref('app:src')}", f"http://{stack.ref('app:esgz')}"
    )
    assert "workload-done" in run.stdout + run.stderr  # the profiling run did run the workload
    digest = run.digest

    report = oracle.check_image(stack.ref("app:esgz"))
    assert report["manifests"][0]["digest"] == digest
    layers_report = report["manifests"][0]["layers"]
    expected = {layer["digest"]: layer["blob"]["prefetch_bytes"] for layer in layers_report}
    base, lib, app = expected
    # busybox and the app's files are prioritized; nothing of the middle layer is read.
    assert expected[base] > 0 and expected[app] > 0 and expected[lib] == 0, expected

    # Lazy pull: the snapshotter prefetches exactly the range before each landmark.
    pulling = stack.mark()
    stack.ctr("image", "rpull", "--plain-http", stack.ref("app:esgz"))
    assert stack.wait_prefetched(set(expected)) == expected
    pulled = stack.mark()
    fetched = {
        layer: sum(f.size for f in stack.blob_fetches("app", layer, pulling, pulled)) for layer in expected
    }
    assert fetched[base] >= expected[base] and fetched[app] >= expected[app], (fetched, expected)
    assert fetched[app] < len(COLD), "the unread file was downloaded with the layer"
    content = stack.ctr("content", "ls", "-q")
    assert not [d for d in expected if d in content], "a layer was downloaded: the pull was not lazy"
    assert len(stack.fuse_mounts()) >= len(expected), stack.fuse_mounts()

    # The workload again, through the snapshotter's FUSE layers: everything it opens was prefetched.
    before = stack.mark()
    out = stack.ctr("run", "--rm", "--snapshotter=stargz", stack.ref("app:esgz"), "lazypull-workload")
    after = stack.mark()
    assert out.splitlines() == ["data", "app motd", "workload-done"]
    for layer in expected:
        assert stack.blob_fetches("app", layer, before, after) == [], f"{layer} fetched during the run"

    # A file the workload never read is not there yet: reading it goes to the registry, in ranges.
    out = stack.ctr(
        "run", "--rm", "--snapshotter=stargz", stack.ref("app:esgz"), "lazypull-cold",
        "/bin/busybox", "sha256sum", f"/{COLD_PATH}",
    )  # fmt: skip
    done = stack.mark()
    assert out.split()[0] == hashlib.sha256(COLD).hexdigest()
    cold = stack.blob_fetches("app", app, after, done)
    assert cold and {f.status for f in cold} == {206}, cold
    assert sum(f.size for f in cold) >= len(COLD) // 2, cold
    assert stack.blob_fetches("app", base, after, done) == []
    assert stack.blob_fetches("app", lib, after, done) == []
