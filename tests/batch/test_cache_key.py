"""The cache key: everything a converted layer depends on, nothing that only changes the speed."""

from __future__ import annotations

from dataclasses import replace

from ctr_remote.estargz import BuildOptions, LayerFormat
from ctr_remote.image import Descriptor, parse_reference
from ctr_remote.layercache.local import layer_key
from ctr_remote.options import OptimizeOptions

SRC = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 100)
DIFF = "sha256:" + "b" * 64
BASE = OptimizeOptions(
    source=parse_reference("reg.example/a:1", plain_http=False),
    target=parse_reference("reg.example/a:2", plain_http=False),
)


def key(options: OptimizeOptions = BASE, files: list[str] | None = None, src: Descriptor = SRC) -> str:
    return layer_key(src, DIFF, files or [], options)


def test_what_changes_the_blob_changes_the_key() -> None:
    keys = {
        key(),
        key(files=["bin/sh"]),
        key(files=["bin/sh", "etc/passwd"]),
        key(files=["etc/passwd", "bin/sh"]),
        key(src=replace(SRC, digest="sha256:" + "c" * 64)),
        key(src=replace(SRC, media_type="application/vnd.docker.image.rootfs.diff.tar.gzip")),
        key(src=replace(SRC, annotations={"org.example": "x"})),  # carried into the descriptor
        key(replace(BASE, oci=True)),
        key(replace(BASE, reuse=True)),
        key(replace(BASE, uncompressed=True)),
        key(replace(BASE, layer=BuildOptions(compression_level=1))),
        key(replace(BASE, layer=BuildOptions(chunk_size=1 << 20))),
        key(replace(BASE, layer=BuildOptions(min_chunk_size=65536))),
        key(replace(BASE, layer=BuildOptions(external_toc=True))),
        key(replace(BASE, layer=BuildOptions(format=LayerFormat.ZSTD_CHUNKED))),
    }
    assert len(keys) == 15


def test_what_only_changes_the_speed_or_the_image_around_it_does_not() -> None:
    same = {
        key(),
        key(replace(BASE, layer=BuildOptions(workers=1))),
        key(replace(BASE, layer=BuildOptions(compression_level=9))),  # the default, spelled out
        key(replace(BASE, target=parse_reference("other.example/b:3", plain_http=False))),
    }
    assert len(same) == 1
