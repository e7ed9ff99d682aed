"""The lazy pull of an image in each of upstream's other layouts that OUR `optimize` wrote:
zstd:chunked, min chunk size (innerOffset) and external TOC (the snapshotter fetches the TOCs from
the `-esgztoc` image). The v0.14.3 snapshotter prefetches exactly the range before each landmark,
and the workload then runs without a single registry request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr_remote.image import RegistryOptions, open_store, parse_reference
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.lazypull.stack import StargzStack
from tests.optimize.conftest import Cli

FORMATS = {
    "zstdchunked": ("--oci", "--zstdchunked"),
    "minchunk": ("--estargz-min-chunk-size", "65536"),
    "external-toc": ("--estargz-external-toc",),
}


@pytest.mark.parametrize("kind", FORMATS)
def test_lazy_pull_of_each_format(stack: StargzStack, workdir: Path, kind: str) -> None:
    (workdir / "tmpdir").mkdir()
    (workdir / "docker-config").mkdir()
    with open_store(
        parse_reference(f"http://{stack.ref('app:src')}", plain_http=True),
        RegistryOptions(docker_config=workdir / "docker-config"),
    ) as store:
        publish(store, runnable_image(app_layers()), workdir / "push")
    cli = Cli(workdir / "tmpdir", workdir / "docker-config")
    cli.optimize(*FORMATS[kind], f"http://{stack.ref('app:src')}", f"http://{stack.ref('app:lazy')}")

    # What each layer's landmark says the snapshotter must prefetch (our image check reads all
    # three layouts; the oracle checks them in tests/optimize/test_formats.py).
    check = cli(
        "image", "check", "--plain-http", "--output", "json", "--strict", f"http://{stack.ref('app:lazy')}"
    )
    layers = json.loads(check.stdout)["manifests"][0]["layers"]
    expected = {layer["digest"]: layer["prefetch_bytes"] for layer in layers}
    base, lib, app = expected
    assert expected[base] > 0 and expected[app] > 0 and expected[lib] == 0, expected

    pulling = stack.mark()
    stack.ctr("image", "rpull", "--plain-http", stack.ref("app:lazy"))
    assert stack.wait_prefetched(set(expected)) == expected
    pulled = stack.mark()
    content = stack.ctr("content", "ls", "-q")
    assert not [d for d in expected if d in content], "a layer was downloaded: the pull was not lazy"
    fetched = {layer: stack.blob_fetches("app", layer, pulling, pulled) for layer in expected}
    assert all(f.status == 206 for fs in fetched.values() for f in fs), fetched  # ranges only

    before = stack.mark()
    out = stack.ctr("run", "--rm", "--snapshotter=stargz", stack.ref("app:lazy"), "lazypull-workload")
    after = stack.mark()
    assert out.splitlines() == ["data", "app motd", "workload-done"]
    for layer in expected:
        assert stack.blob_fetches("app", layer, before, after) == [], f"{layer} fetched during the run"
