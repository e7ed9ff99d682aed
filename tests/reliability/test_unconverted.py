"""Layers the format cannot represent are copied unconverted, with a warning naming the layer and the
reason, and the rest of the image is optimized; --require-converted makes them an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ctr_remote.estargz import TOC_DIGEST_ANNOTATION
from ctr_remote.image import open_store, parse_reference
from tests.conftest import Oracle
from tests.helpers.images import LayerBuilder
from tests.helpers.sample import app_layers, publish, runnable_image


def dangling_hardlink() -> LayerBuilder:
    link = tarfile.TarInfo("usr/lib/link")
    link.type, link.linkname = tarfile.LNKTYPE, "usr/lib/missing"
    return LayerBuilder().add(link, b"")


BAD_LAYERS = {
    "non-UTF-8 name": (lambda: LayerBuilder().add(tarfile.TarInfo("bad-\udcff-name"), b"x"), "not UTF-8"),
    "dangling hardlink": (dangling_hardlink, "which is not in the layer"),
}


def optimize(workdir: Path, *flags: str) -> tuple[int, list[dict]]:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "--log-format", "json", "image", "optimize", "--period", "10",
         *flags, f"local://{workdir / 'src'}", f"local://{workdir / 'dst'}"],
        env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    assert list(tmp.iterdir()) == []
    return done.returncode, [json.loads(line) for line in done.stderr.splitlines()]


@pytest.mark.parametrize("kind", list(BAD_LAYERS))
def test_a_layer_that_cannot_be_estargz_is_copied_with_a_warning(
    workdir: Path, oracle: Oracle, kind: str
) -> None:
    make, reason = BAD_LAYERS[kind]
    image = runnable_image([*app_layers(), make()])
    bad = image.layers[-1].desc.digest
    with open_store(parse_reference(f"local://{workdir / 'src'}")) as store:
        publish(store, image, workdir / "push")
    code, events = optimize(workdir)
    assert code == 0, events
    warnings = [e for e in events if e["level"] == "warning" and "without conversion" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["layer"] == bad and reason in warnings[0]["reason"], events
    index = json.loads((workdir / "dst" / "index.json").read_text())
    blobs = workdir / "dst" / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    *converted, copied = manifest["layers"]
    assert copied["digest"] == bad and TOC_DIGEST_ANNOTATION not in (copied.get("annotations") or {})
    assert all(TOC_DIGEST_ANNOTATION in layer["annotations"] for layer in converted)
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["rootfs"]["diff_ids"][-1] == json.loads(image.config.data)["rootfs"]["diff_ids"][-1]
    report = oracle.check_image(workdir / "dst", all_estargz=False)  # the copied layer is plain gzip
    assert report["estargz_layers"] == len(converted)


def test_require_converted_makes_it_an_error(workdir: Path) -> None:
    image = runnable_image([*app_layers(), BAD_LAYERS["non-UTF-8 name"][0]()])
    with open_store(parse_reference(f"local://{workdir / 'src'}")) as store:
        publish(store, image, workdir / "push")
    code, events = optimize(workdir, "--require-converted")
    assert code == 1
    assert events[-1]["event"].startswith(f"layer {image.layers[-1].desc.digest}: ")
    assert events[-1]["event"].endswith("(--require-converted)")
    assert not (workdir / "dst" / "index.json").exists()
