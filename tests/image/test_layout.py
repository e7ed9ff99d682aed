"""OCI layout directories: malformed input refused in one line, corrupt blobs refused, and an
interrupted write leaves the old index.json (and the images it lists) intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctr_remote.image import (
    DigestMismatchError,
    ImageError,
    LayoutError,
    NotFoundError,
    copy_image,
    open_store,
    parse_index,
    parse_platform,
    parse_reference,
    read_image,
)
from tests.helpers.oci import build_image, build_index, push

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_malformed_layouts(workdir: Path) -> None:
    ref = parse_reference(f"local://{workdir}/nothing")
    with open_store(ref) as s, pytest.raises(LayoutError, match="not an OCI image layout"):
        s.resolve()
    (workdir / "bad").mkdir()
    (workdir / "bad/index.json").write_text("{not json")
    with open_store(parse_reference(f"local://{workdir}/bad")) as s, pytest.raises(LayoutError) as e:
        s.resolve()
    assert "invalid index.json" in str(e.value) and "\n" not in str(e.value)
    (workdir / "bad/index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    with (
        open_store(parse_reference(f"local://{workdir}/bad")) as s,
        pytest.raises(NotFoundError, match="no image"),
    ):
        s.resolve()


def test_missing_and_corrupt_blobs(workdir: Path) -> None:
    img = build_image([{"a": b"a" * 100}, {"b": b"b" * 100}])
    ref = parse_reference(f"local://{workdir}/lay")
    with open_store(ref) as s:
        push(s, img, workdir / "build")
    blob = workdir / "lay/blobs/sha256" / img.layers[1].desc.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with open_store(ref) as s:
        got = read_image(s, s.resolve())
        s.fetch_blob(got.manifest.layers[0], workdir / "ok")
        with pytest.raises(DigestMismatchError) as e:
            s.fetch_blob(got.manifest.layers[1], workdir / "bad")
        assert img.layers[1].desc.digest in str(e.value)
        assert not (workdir / "bad").exists()
        blob.unlink()
        with pytest.raises(NotFoundError, match=img.layers[1].desc.digest):
            s.fetch_blob(got.manifest.layers[1], workdir / "bad")


def test_relative_layout_reference(workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    img = build_image([{"rel": b"relative"}])
    with open_store(parse_reference("local://sub/dir")) as s:
        push(s, img, workdir / "build")
    index = json.loads((workdir / "sub/dir/index.json").read_text())
    assert [e["digest"] for e in index["manifests"]] == [img.manifest.desc.digest]
    assert "annotations" not in index["manifests"][0]  # written without a name


def test_index_json_is_replaced_by_rename(workdir: Path) -> None:
    ref = parse_reference(f"local://{workdir}/lay:a")
    with open_store(ref) as s:
        push(s, build_image([{"1": b"1"}]), workdir / "b1")
    before = os.stat(workdir / "lay/index.json").st_ino
    with open(workdir / "lay/index.json", "rb") as reader:  # a reader holding the old file
        old = reader.read()
        with open_store(parse_reference(f"local://{workdir}/lay:b")) as s:
            push(s, build_image([{"2": b"2"}]), workdir / "b2")
        reader.seek(0)
        assert reader.read() == old  # the open file was never rewritten in place
    assert os.stat(workdir / "lay/index.json").st_ino != before
    assert not [p for p in (workdir / "lay").iterdir() if p.name.endswith(".tmp")]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ctr_remote.image import Descriptor, open_store, parse_reference
    layer, digest, size, layout = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open_store(parse_reference(layout)) as s:
        s.push_blob(Path(layer), Descriptor("application/vnd.oci.image.layer.v1.tar", digest, size))
        print("unreachable", flush=True)
    """
)


def test_killed_write_leaves_the_old_index_intact(workdir: Path) -> None:
    old = build_image([{"old": b"old image"}])
    layout = workdir / "lay"
    with open_store(parse_reference(f"local://{layout}:app")) as s:
        push(s, old, workdir / "build")
    index_before = (layout / "index.json").read_bytes()

    # A second writer is killed while a blob streams in from a pipe (it blocks on the pipe, so the
    # kill lands mid-write), before it could reach index.json.
    new = build_image([{"new": os.urandom(1 << 20)}], compress=False)
    fifo = workdir / "layer.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    desc = new.layers[0].desc
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(fifo), desc.digest, str(desc.size), f"local://{layout}:app"],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        with open(fifo, "wb") as pipe:  # opens once the child opened the pipe for reading
            pipe.write(new.layers[0].data[: 256 << 10])
            pipe.flush()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert child.stdout is not None and child.stdout.read() == b""
    assert (layout / "index.json").read_bytes() == index_before
    assert not (layout / "blobs/sha256" / desc.digest.split(":")[1]).exists()
    with open_store(parse_reference(f"local://{layout}:app")) as s:
        top = s.resolve()
        assert top.digest == old.manifest.desc.digest
        assert read_image(s, top).config_bytes == old.config.data
    with open_store(parse_reference(f"local://{layout}")) as s:
        assert s.resolve().digest == old.manifest.desc.digest
        assert parse_index(index_before).manifests[0].digest == old.manifest.desc.digest


@pytest.mark.parametrize("kind", ["fifo", "zero-device", "longer-file"])
def test_layout_files_that_are_not_what_they_claim(workdir: Path, kind: str) -> None:
    """A blob or index.json that is a fifo (open would block), a link to /dev/zero (endless) or far
    longer than its descriptor: refused without reading it all."""
    img = build_image([{"a": b"a" * 100}])
    ref = parse_reference(f"local://{workdir}/lay")
    with open_store(ref) as s:
        push(s, img, workdir / "build")
    config = workdir / "lay/blobs/sha256" / img.config.desc.digest.split(":")[1]
    index = workdir / "lay/index.json"
    for path in (config, index):
        saved = path.read_bytes()
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero-device":
            path.symlink_to("/dev/zero")
        else:
            path.write_bytes(saved + b" " * (80 << 20))
        with open_store(ref) as s, pytest.raises(ImageError) as e:
            read_image(s, s.resolve())
        assert "\n" not in str(e.value)
        expected = {"fifo": "is not a regular file", "zero-device": "is not a regular file"}.get(kind)
        if expected:
            assert expected in str(e.value)
        path.unlink()
        path.write_bytes(saved)


def test_several_images_without_a_name_are_refused(workdir: Path) -> None:
    lay = workdir / "lay"
    for name in ("a", "b", "c"):
        with open_store(parse_reference(f"local://{lay}:{name}")) as s:
            push(s, build_image([{name: name.encode() * 100}]), workdir / "build")
    with open_store(parse_reference(f"local://{lay}")) as s, pytest.raises(LayoutError) as e:
        s.resolve()
    assert str(e.value) == f"local://{lay} holds 3 images (a, b, c): pick one with local://{lay}:NAME"
    with open_store(parse_reference(f"local://{lay}:b")) as s:
        assert s.resolve().media_type == "application/vnd.oci.image.manifest.v1+json"

    # unnamed entries for the same platform are not one image's platforms either
    index = json.loads((lay / "index.json").read_text())
    for entry in index["manifests"][:2]:
        del entry["annotations"]
        entry["platform"] = {"os": "linux", "architecture": "amd64"}
    (lay / "index.json").write_text(json.dumps({**index, "manifests": index["manifests"][:2]}))
    with open_store(parse_reference(f"local://{lay}")) as s, pytest.raises(LayoutError, match="2 images"):
        s.resolve()

    p = subprocess.run(
        [sys.executable, "-m", "ctr_remote", "image", "optimize", "--no-optimize", f"local://{lay}",
         f"local://{workdir}/out"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode != 0 and p.stderr.strip().splitlines() == [
        f"ctr-remote: local://{lay} holds 2 images (unnamed {index['manifests'][0]['digest'][:19]}, "
        f"unnamed {index['manifests'][1]['digest'][:19]}): pick one with local://{lay}:NAME"
    ]
    assert not (workdir / "out").exists()


def test_index_json_listing_one_images_platforms_is_its_index(workdir: Path) -> None:
    """As ggcr writes a multi-platform image: its platform manifests straight in index.json."""
    amd = build_image([{"amd": b"x" * 100}], platform="linux/amd64")
    arm = build_image([{"arm": b"y" * 100}], platform="linux/arm64")
    idx = build_index([amd, arm])
    lay = workdir / "lay"
    with open_store(parse_reference(f"local://{lay}:tmp")) as s:
        push(s, idx, workdir / "build")
    (lay / "index.json").write_bytes(idx.index.data)
    with open_store(parse_reference(f"local://{lay}")) as s:
        top = s.resolve()
        assert top.media_type == "application/vnd.oci.image.index.v1+json"
        got = parse_index(s.read_manifest(top))
        assert [str(e.platform) for e in got.manifests] == ["linux/amd64", "linux/arm64"]
        out = parse_reference(f"local://{workdir}/out")
        with open_store(out) as dst:
            written = copy_image(
                s, dst, workdir / "cache", platforms=[parse_platform("linux/arm64")], all_platforms=False
            )
        with open_store(out) as dst:
            copied = parse_index(dst.read_manifest(dst.resolve()))
    assert written.media_type == top.media_type
    assert [e.digest for e in copied.manifests] == [arm.manifest.desc.digest]
