"""Faults through a real socket (tests.helpers.faultproxy in front of the real registry): transient
failures are retried within the bound, corrupt content is refused, and a failed push never moves
the tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr_remote.image import (
    DigestMismatchError,
    NotFoundError,
    RetriesExhaustedError,
    copy_image,
    open_store,
    parse_reference,
)
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.oci import BuiltImage, build_image, build_index, push
from tests.helpers.registry import RegistryServer, free_port


def _via(proxy: FaultProxy, repo_tag: str):
    return parse_reference(f"http://{proxy.host}/{repo_tag}", plain_http=True)


def _img(tag: str, n: int = 2) -> BuiltImage:
    return build_image([{f"{tag}/{i}": f"{tag}-{i}".encode() * 500} for i in range(n)])


def _seed(registry: RegistryServer, workdir: Path, repo_tag: str, img: BuiltImage) -> None:
    with open_store(registry.reference(repo_tag), registry.options()) as s:
        push(s, img, workdir / f"seed-{img.manifest.desc.digest[7:19]}")


def _statuses(proxy: FaultProxy, method: str, path_part: str) -> list[int]:
    return [h.status for h in proxy.hits if h.method == method and path_part in h.path]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault("status", path="/blobs/", method="GET", times=2, status=500), [500, 500, 200]),
        (
            Fault("status", path="/blobs/", method="GET", times=3, status=429, retry_after="0"),
            [429, 429, 429, 200],
        ),
        (Fault("status", path="/blobs/", method="GET", times=1, status=503), [503, 200]),
        (Fault("drop", path="/blobs/", method="GET", times=2), [0, 0, 200]),
        (Fault("truncate", path="/blobs/", method="GET", times=2), [200, 206, 206]),  # resumed by Range
    ],
    ids=["500", "429", "503", "drop", "truncate"],
)
def test_blob_download_retries(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, fault: Fault, expected: list[int]
) -> None:
    img = _img("dl", 1)
    _seed(registry, workdir, "dl:v1", img)
    layer = img.layers[0]
    fault.path = f"/blobs/{layer.desc.digest}"
    fault_proxy.add(fault)
    with open_store(_via(fault_proxy, "dl:v1"), registry.options()) as s:
        s.fetch_blob(layer.desc, workdir / "out")
    assert (workdir / "out").read_bytes() == layer.data
    assert _statuses(fault_proxy, "GET", layer.desc.digest) == expected
    assert not [p for p in workdir.iterdir() if p.name.startswith(".out.")]  # no temp left behind


def test_resume_from_a_registry_that_ignores_range(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("norange", 1)
    _seed(registry, workdir, "norange:v1", img)
    layer = img.layers[0]
    fault_proxy.ignore_range = True
    fault_proxy.add(Fault("truncate", path=f"/blobs/{layer.desc.digest}", method="GET", times=2))
    with open_store(_via(fault_proxy, "norange:v1"), registry.options()) as s:
        s.fetch_blob(layer.desc, workdir / "out")
    assert (workdir / "out").read_bytes() == layer.data  # the part already received was skipped
    assert _statuses(fault_proxy, "GET", layer.desc.digest) == [200, 200, 200]


def test_manifest_and_push_requests_retry(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    fault_proxy.add(Fault("status", path="/manifests/", method="PUT", times=1, status=502))
    fault_proxy.add(Fault("drop", path="/blobs/uploads/", method="POST", times=1))
    fault_proxy.add(Fault("status", path="/blobs/uploads/", method="PUT", times=2, status=500))
    fault_proxy.add(Fault("status", path="/blobs/", method="HEAD", times=1, status=429, retry_after="0"))
    fault_proxy.add(Fault("status", path="/manifests/v1", method="GET", times=2, status=500))
    img = _img("push")
    with open_store(_via(fault_proxy, "push:v1"), registry.options()) as s:
        push(s, img, workdir / "build")
        assert s.resolve().digest == img.manifest.desc.digest
    assert all(f.hits == f.times for f in fault_proxy.faults)
    with open_store(registry.reference("push:v1"), registry.options()) as s:
        assert s.resolve().digest == img.manifest.desc.digest


def test_chunked_upload_survives_a_failed_chunk_and_a_lost_session(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = build_image([{"big": bytes(range(256)) * 12_000}], compress=False)  # ~3 MB: 3 chunks of 1 MiB
    fault_proxy.add(Fault("status", path="/blobs/uploads/", method="PATCH", times=1, status=500))
    with open_store(_via(fault_proxy, "chunky:v1"), registry.options(chunk_size=1 << 20)) as s:
        push(s, img, workdir / "build")
    assert _statuses(fault_proxy, "PATCH", "/blobs/uploads/")[:2] == [500, 202]

    fault_proxy.clear()
    img2 = build_image([{"big2": bytes(range(255, -1, -1)) * 12_000}], compress=False)
    fault_proxy.add(Fault("status", path="/blobs/uploads/", method="PATCH", times=1, status=404))
    with open_store(_via(fault_proxy, "chunky:v2"), registry.options(chunk_size=1 << 20)) as s:
        push(s, img2, workdir / "build2")
    # the session the registry "forgot" was abandoned and a fresh one started
    assert len([h for h in fault_proxy.hits if h.method == "POST" and "/blobs/uploads/" in h.path]) == 3
    with open_store(registry.reference("chunky:v2"), registry.options()) as s:
        s.fetch_blob(img2.layers[0].desc, workdir / "check")
    assert (workdir / "check").read_bytes() == img2.layers[0].data


def test_requests_whose_answer_was_lost(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    """The registry acted but the client never heard: a completed upload (then found by HEAD), an
    accepted chunk (then the session is restarted), a stored manifest (PUT again)."""
    fault_proxy.add(Fault("lost", path="/blobs/uploads/.*digest=", method="PUT", times=1))
    fault_proxy.add(Fault("lost", path="/blobs/uploads/", method="PATCH", times=1))
    fault_proxy.add(Fault("lost", path="/manifests/", method="PUT", times=1))
    img = build_image([{"small": b"s" * 1000}, {"big": bytes(range(256)) * 9000}], compress=False)
    with open_store(_via(fault_proxy, "lost:v1"), registry.options(chunk_size=1 << 20)) as s:
        push(s, img, workdir / "build")
    assert all(f.hits == 1 for f in fault_proxy.faults)
    with open_store(registry.reference("lost:v1"), registry.options()) as s:
        assert s.resolve().digest == img.manifest.desc.digest
        for b in img.layers:
            s.fetch_blob(b.desc, workdir / "check")
            assert (workdir / "check").read_bytes() == b.data


def test_retries_exhausted_is_a_clear_error(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("bound", 1)
    _seed(registry, workdir, "bound:v1", img)
    fault_proxy.add(Fault("status", path="/blobs/", method="GET", times=-1, status=500))
    with (
        open_store(_via(fault_proxy, "bound:v1"), registry.options(retries=3)) as s,
        pytest.raises(RetriesExhaustedError) as e,
    ):
        s.fetch_blob(img.layers[0].desc, workdir / "out")
    assert "giving up after 4 attempts" in str(e.value) and "HTTP 500" in str(e.value)
    assert e.value.status == 500  # the status travels with the error, for callers to act on
    assert "\n" not in str(e.value)
    assert len(_statuses(fault_proxy, "GET", "/blobs/")) == 4
    assert not (workdir / "out").exists()

    fault_proxy.clear()
    fault_proxy.add(Fault("drop", path="/manifests/", times=-1))
    with (
        open_store(_via(fault_proxy, "bound:v1"), registry.options(retries=2)) as s,
        pytest.raises(RetriesExhaustedError, match="giving up after 3 attempts"),
    ):
        s.resolve()


def test_corrupt_blob_is_refused_and_nothing_is_pushed(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("corrupt")
    _seed(registry, workdir, "corrupt:v1", img)
    bad = img.layers[1]
    fault_proxy.add(Fault("corrupt", path=f"/blobs/{bad.desc.digest}", method="GET", times=-1))
    target = parse_reference(f"local://{workdir}/target:out")
    with (
        open_store(_via(fault_proxy, "corrupt:v1"), registry.options()) as src,
        open_store(target) as dst,
        pytest.raises(DigestMismatchError) as e,
    ):
        copy_image(src, dst, workdir / "cache")
    assert bad.desc.digest in str(e.value) and "\n" not in str(e.value)
    assert not (workdir / "target").exists()  # no layout, no index.json, not a single blob
    assert not (workdir / "cache" / bad.desc.digest.split(":")[1]).exists()
    with (
        open_store(_via(fault_proxy, "corrupt:v1"), registry.options()) as src,
        open_store(registry.reference("corrupt-copy:v1"), registry.options()) as dst,
        pytest.raises(DigestMismatchError),
    ):
        copy_image(src, dst, workdir / "cache2")
    with (
        open_store(registry.reference("corrupt-copy:v1"), registry.options()) as s,
        pytest.raises(NotFoundError) as missing,
    ):
        s.resolve()
    assert missing.value.status == 404


def test_failed_push_leaves_the_tag_on_the_old_image(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    old = _img("old")
    _seed(registry, workdir, "app:stable", old)
    new = build_index([_img("new-amd64"), build_image([{"arm": b"arm64"}], platform="linux/arm64")])
    # the second platform's manifest cannot be stored: the index (and the tag) must not be written
    fault_proxy.add(
        Fault(
            "status",
            path=f"/manifests/{new.images[1].manifest.desc.digest}",
            method="PUT",
            times=-1,
            status=500,
        )
    )
    with (
        open_store(_via(fault_proxy, "app:stable"), registry.options(retries=1)) as s,
        pytest.raises(RetriesExhaustedError),
    ):
        push(s, new, workdir / "build")
    assert not [h for h in fault_proxy.hits if h.path.endswith("/manifests/stable")]
    with open_store(registry.reference("app:stable"), registry.options()) as s:
        assert s.resolve().digest == old.manifest.desc.digest

    # a layer upload that keeps failing stops the push before any manifest
    fault_proxy.clear()
    fault_proxy.add(Fault("status", path="/blobs/uploads/", method="PUT", times=-1, status=500))
    with (
        open_store(_via(fault_proxy, "app:stable"), registry.options(retries=1)) as s,
        pytest.raises(RetriesExhaustedError),
    ):
        push(s, _img("newer"), workdir / "build2")
    assert not [h for h in fault_proxy.hits if "/manifests/" in h.path]
    with open_store(registry.reference("app:stable"), registry.options()) as s:
        assert s.resolve().digest == old.manifest.desc.digest


def test_pushing_content_that_does_not_match_its_descriptor(registry: RegistryServer, workdir: Path) -> None:
    img = _img("mismatch", 1)
    layer = img.layers[0]
    wrong = workdir / "wrong"
    wrong.write_bytes(bytes(b ^ 1 for b in layer.data))  # same size, other content
    with open_store(registry.reference("mismatch:v1"), registry.options()) as s:
        with pytest.raises(DigestMismatchError) as e:
            s.push_blob(wrong, layer.desc)
        assert layer.desc.digest in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(NotFoundError):
            s.fetch_blob(layer.desc, workdir / "never")
    layout = parse_reference(f"local://{workdir}/lay")
    with open_store(layout) as s, pytest.raises(DigestMismatchError, match=layer.desc.digest):
        s.push_blob(wrong, layer.desc)
    assert not list((workdir / "lay/blobs/sha256").iterdir())


def test_refused_connection_fails_fast_but_resets_keep_the_full_budget(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    port = free_port()  # nothing listens there
    ref = parse_reference(f"http://127.0.0.1:{port}/app:v1", plain_http=True)
    with open_store(ref, registry.options()) as s, pytest.raises(RetriesExhaustedError) as e:
        s.resolve()
    assert "giving up after 3 attempts" in str(e.value) and "ConnectError" in str(e.value)
    assert e.value.status is None  # no answer, no status

    fault_proxy.add(Fault("drop", path="/manifests/", method="GET", times=5))  # resets: 5 retries
    _seed(registry, workdir, "reset:v1", _img("reset", 1))
    with open_store(_via(fault_proxy, "reset:v1"), registry.options(backoff=0.01)) as s:
        s.resolve()
    assert _statuses(fault_proxy, "GET", "/manifests/") == [0, 0, 0, 0, 0, 200]
