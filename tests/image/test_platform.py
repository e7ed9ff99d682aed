"""Platform specifiers and choosing manifests from an index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr_remote.image import (
    Descriptor,
    Platform,
    PlatformError,
    copy_image,
    digest_bytes,
    host_platform,
    open_store,
    parse_index,
    parse_platform,
    parse_reference,
    select_manifests,
)
from tests.helpers.oci import Blob, BuiltIndex, build_image, build_index, push

pytestmark = pytest.mark.unit


def _entry(plat: str | None) -> Descriptor:
    p = None
    if plat:
        parts = plat.split("/")
        p = Platform(parts[0], parts[1], parts[2] if len(parts) > 2 else None)
    return Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "0" * 64, 1, platform=p)


def test_parse_platform_forms() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/arm/v6") == Platform("linux", "arm", "v6")
    assert parse_platform("linux/arm") == Platform("linux", "arm", "v7")
    assert parse_platform("linux/aarch64") == Platform("linux", "arm64")
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64")
    assert parse_platform("arm64") == Platform("linux", "arm64")
    assert parse_platform("linux") == host_platform()
    for bad in ("", "linux/", "a/b/c/d"):
        with pytest.raises(PlatformError):
            parse_platform(bad)


def test_select_by_platform() -> None:
    entries = [_entry("linux/amd64"), _entry("linux/arm64/v8"), _entry("linux/arm/v7"), _entry(None)]
    assert select_manifests(entries, [parse_platform("linux/arm64")]) == [entries[1]]
    assert select_manifests(entries, [parse_platform("linux/arm")]) == [entries[2]]
    two = select_manifests(entries, [parse_platform("linux/arm/v7"), parse_platform("linux/amd64")])
    assert two == [entries[0], entries[2]]
    assert select_manifests(entries, all_platforms=True) == entries
    host = select_manifests(entries)
    assert [e.platform for e in host] == [
        e.platform for e in entries[:3] if e.platform.matches(host_platform())
    ]
    with pytest.raises(PlatformError, match="no manifest for platform linux/s390x"):
        select_manifests(entries, [parse_platform("linux/s390x")])


def test_entry_without_platform_is_what_its_config_says() -> None:
    unlabelled = _entry(None)
    entries = [_entry("linux/s390x"), unlabelled]
    arm = parse_platform("linux/arm64")

    def platform_of(entry: Descriptor) -> Platform | None:
        assert entry is unlabelled  # only asked about entries that name no platform
        return arm

    got = select_manifests(entries, [arm], platform_of=platform_of)
    assert [(e.digest, e.platform) for e in got] == [(unlabelled.digest, arm)]
    assert select_manifests(entries, all_platforms=True, platform_of=platform_of)[1].platform == arm
    with pytest.raises(PlatformError):
        select_manifests(entries, [arm])  # nobody to ask: the entry cannot be chosen
    with pytest.raises(PlatformError, match="it has: linux/s390x"):
        select_manifests(entries, [arm], platform_of=lambda e: None)


def test_copy_filters_an_index_entry_without_platform_by_its_config(workdir: Path) -> None:
    amd = build_image([{"amd": b"x" * 100}], platform="linux/amd64")
    arm = build_image([{"arm": b"y" * 100}], platform="linux/arm64")
    doc = json.loads(build_index([amd, arm]).index.data)
    for entry in doc["manifests"]:
        del entry["platform"]
    data = json.dumps(doc).encode()
    index = Blob(data, Descriptor(doc["mediaType"], digest_bytes(data), len(data)))
    src = parse_reference(f"local://{workdir}/src:app")
    with open_store(src) as s:
        push(s, BuiltIndex((amd, arm), index), workdir / "build")
    dst = parse_reference(f"local://{workdir}/dst:app")
    with open_store(src) as s, open_store(dst) as d:
        copy_image(s, d, workdir / "cache", platforms=[parse_platform("linux/arm64")], all_platforms=False)
    with open_store(dst) as d:
        got = parse_index(d.read_manifest(d.resolve()))
    assert [(e.digest, str(e.platform)) for e in got.manifests] == [(arm.manifest.desc.digest, "linux/arm64")]
