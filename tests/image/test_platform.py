"""Platform specifiers and choosing manifests from an index."""

from __future__ import annotations

import pytest

from ctr_remote.image import (
    Descriptor,
    Platform,
    PlatformError,
    host_platform,
    parse_platform,
    select_manifests,
)


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
