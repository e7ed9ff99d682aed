"""The lazy pull of an image in each of upstream's other layouts that OUR `optimize` wrote:
zstd:chunked, min chunk size (innerOffset) and external TOC (the snapshotter fetches the TOCs from
the `-esgztoc` image). The v0.14.3 snapshotter prefetches exactly the range before each landmark,
and the workload then runs without a single registry request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Oracle
from tests.lazypull.app import publish_app, rpull_lazily
from tests.lazypull.stack import StargzStack

FORMATS = {
    "zstdchunked": ("--oci", "--zstdchunked"),
    "minchunk": ("--estargz-min-chunk-size", "65536"),
    "external-toc": ("--estargz-external-toc",),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_lazy_pull_of_each_format(stack: StargzStack, workdir: Path, oracle: Oracle, kind: str) -> None:
    cli = publish_app(stack, workdir)
    cli.optimize(*FORMATS[kind], f"http://{stack.ref('app:src')}", f"http://{stack.ref('app:lazy')}")
    oracle.check_image(stack.ref("app:lazy"), older_reader=False)  # none of the three is v0.12's

    # What each layer's landmark says the snapshotter must prefetch (our image check reads all
    # three layouts).
    check = cli(
        "image", "check", "--plain-http", "--output", "json", "--strict", f"http://{stack.ref('app:lazy')}"
    )
    layers = json.loads(check.stdout)["manifests"][0]["layers"]
    expected = {layer["digest"]: layer["prefetch_bytes"] for layer in layers}
    base, lib, app = expected
    assert expected[base] > 0 and expected[app] > 0 and expected[lib] == 0, expected

    rpull_lazily(stack, stack.ref("app:lazy"), expected)
    assert stack.wait_prefetched(set(expected)) == expected

    before = stack.mark()
    out = stack.ctr("run", "--rm", "--snapshotter=stargz", stack.ref("app:lazy"), "lazypull-workload")
    after = stack.mark()
    assert out.splitlines() == ["data", "app motd", "workload-done"]
    for layer in expected:
        assert stack.blob_fetches("app", layer, before, after) == [], f"{layer} fetched during the run"


def test_lazy_pull_of_a_keep_diff_id_image(stack: StargzStack, workdir: Path, oracle: Oracle) -> None:
    """`convert --estargz-keep-diff-id`: the layers keep their source's tar (no landmark), their TOCs
    are in the `-esgztoc` image, and the snapshotter still mounts them lazily: ranges only at pull,
    and the workload reads its files through the external TOCs."""
    cli = publish_app(stack, workdir)
    src, kept = f"http://{stack.ref('app:src')}", f"http://{stack.ref('app:kept')}"
    cli("image", "convert", "--plain-http", "--estargz", "--oci", "--estargz-external-toc",
        "--estargz-keep-diff-id", src, kept)  # fmt: skip
    oracle.check_image(stack.ref("app:kept"), ("no landmark",), older_reader=False)
    check = cli("image", "check", "--plain-http", "--output", "json", "--strict", kept)
    layers = json.loads(check.stdout)["manifests"][0]["layers"]
    assert all(la["landmark"] is None and la["diff_id"] == la["config_diff_id"] for la in layers), layers

    rpull_lazily(stack, stack.ref("app:kept"), [la["digest"] for la in layers])
    out = stack.ctr("run", "--rm", "--snapshotter=stargz", stack.ref("app:kept"), "lazypull-workload")
    assert out.splitlines() == ["data", "app motd", "workload-done"]
