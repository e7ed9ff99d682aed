"""Reference parsing: Docker's defaults, http:// gated by plain_http, local:// layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr_remote.image import InvalidReferenceError, Kind, parse_reference

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None),
        ("ghcr.io/org/app@sha256:" + "a" * 64, "ghcr.io", "org/app", None, "sha256:" + "a" * 64),
        ("host:5000/app:t@sha256:" + "b" * 64, "host:5000", "app", "t", "sha256:" + "b" * 64),
        ("https://reg.example.com/app", "reg.example.com", "app", "latest", None),
    ],
)
def test_registry_references(text: str, registry: str, repository: str, tag: str, digest: str | None) -> None:
    ref = parse_reference(text)
    assert ref.kind is Kind.REGISTRY
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert not ref.plain_http
    assert ref.base_url.startswith("https://")


def test_docker_hub_is_served_by_registry_1() -> None:
    assert parse_reference("ubuntu").base_url == "https://registry-1.docker.io"
    assert str(parse_reference("ubuntu")) == "docker.io/library/ubuntu:latest"


def test_plain_http_needs_the_option() -> None:
    with pytest.raises(InvalidReferenceError, match=r"--plain-http option must.*127\.0\.0\.1:5000"):
        parse_reference("http://127.0.0.1:5000/app:v1")
    ref = parse_reference("http://127.0.0.1:5000/app:v1", plain_http=True)
    assert ref.plain_http and ref.base_url == "http://127.0.0.1:5000"
    assert (ref.registry, ref.repository, ref.tag) == ("127.0.0.1:5000", "app", "v1")
    # --plain-http alone does not downgrade an https reference
    assert not parse_reference("127.0.0.1:5000/app", plain_http=True).plain_http


@pytest.mark.parametrize(
    "text",
    ["", "UPPER", "host:5000/Repo", "app:", "app:bad tag", "app@sha256:short", "app@md5:" + "a" * 32,
     "ftp://host/app", "a//b", "-app", "app:" + "t" * 129],
)  # fmt: skip
def test_invalid_references(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(text)
    assert "\n" not in str(e.value)


def test_layout_references() -> None:
    ref = parse_reference("local:///tmp/out/")
    assert ref.kind is Kind.LAYOUT and ref.path == Path("/tmp/out/") and ref.tag is None
    rel = parse_reference("local://rel/dir")
    assert rel.path == Path("rel/dir")
    named = parse_reference("local:///tmp/out:v2")
    assert named.path == Path("/tmp/out") and named.tag == "v2"
    assert str(named) == "local:///tmp/out:v2"
    with pytest.raises(InvalidReferenceError):
        parse_reference("local://")
