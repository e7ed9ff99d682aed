"""The sample app in the lazy-pull stack's registry, and the check every lazy-pull test makes of a pull."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ctr_remote.image import RegistryOptions, open_store, parse_reference
from tests.helpers.images import LayerBuilder
from tests.helpers.sample import app_layers, publish, runnable_image
from tests.lazypull.stack import StargzStack
from tests.optimize.conftest import Cli


def publish_app(stack: StargzStack, workdir: Path, layers: list[LayerBuilder] | None = None) -> Cli:
    """Push the sample app as `app:src` to the stack's registry; the CLI to convert it with."""
    (workdir / "tmpdir").mkdir()
    (workdir / "docker-config").mkdir()
    with open_store(
        parse_reference(f"http://{stack.ref('app:src')}", plain_http=True),
        RegistryOptions(docker_config=workdir / "docker-config"),
    ) as store:
        publish(store, runnable_image(layers or app_layers()), workdir / "push")
    return Cli(workdir / "tmpdir", workdir / "docker-config")


def rpull_lazily(stack: StargzStack, ref: str, layers: Iterable[str]) -> None:
    """`ctr-remote image rpull` REF, asserting it was lazy: no layer in the content store, and only
    range requests for the layers' blobs."""
    pulling = stack.mark()
    stack.ctr("image", "rpull", "--plain-http", ref)
    pulled = stack.mark()
    content = stack.ctr("content", "ls", "-q")
    assert not [d for d in layers if d in content], "a layer was downloaded: the pull was not lazy"
    fetched = [f for d in layers for f in stack.blob_fetches("app", d, pulling, pulled)]
    assert all(f.status == 206 for f in fetched), fetched  # ranges only
