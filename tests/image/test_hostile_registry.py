"""A hostile or broken registry, through a real socket (the fault proxy in front of the real registry):
documents too large to hold are refused while they arrive, blobs that do not match their descriptor
are refused, redirects are followed without carrying credentials to another host, and a token server
answering garbage is a one-line AuthError. Only 127.0.0.0/8 is ever contacted."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
import zstandard

from ctr_remote.image import (
    AuthError,
    DigestMismatchError,
    ImageError,
    RegistryError,
    open_store,
    parse_reference,
)
from ctr_remote.image.registry import MAX_MANIFEST_SIZE
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.oci import BuiltImage, build_image, push
from tests.helpers.registry import PASSWORD, USER, RegistryServer, basic_auths, write_docker_config

QUICK = 20.0  # seconds: reading a flood to its end would take far longer than this


def _via(proxy: FaultProxy, repo_tag: str):
    return parse_reference(f"http://{proxy.host}/{repo_tag}", plain_http=True)


def _img(tag: str) -> BuiltImage:
    return build_image([{f"{tag}/f": tag.encode() * 2000}])


def _seed(registry: RegistryServer, workdir: Path, repo_tag: str, img: BuiltImage) -> None:
    with open_store(registry.reference(repo_tag), registry.options()) as s:
        push(s, img, workdir / f"seed-{repo_tag.replace(':', '-')}")


def _one_line(e: pytest.ExceptionInfo, *must: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    for m in must:
        assert m in msg, msg
    return msg


@pytest.mark.parametrize("claimed", [None, 1 << 40], ids=["chunked-endless", "content-length-1TiB"])
def test_gigantic_manifest_is_refused_while_it_arrives(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, claimed: int | None
) -> None:
    fault_proxy.add(Fault("flood", path="/manifests/", method="GET", times=-1, flood_length=claimed))
    started = time.monotonic()
    with open_store(_via(fault_proxy, "big:v1"), registry.options()) as s, pytest.raises(ImageError) as e:
        s.resolve()
    _one_line(e, "manifest v1 is too large", str(MAX_MANIFEST_SIZE))
    assert time.monotonic() - started < QUICK
    assert len(fault_proxy.hits) == 1  # refused, not retried


def test_config_larger_than_its_descriptor_is_not_read_past_it(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("cfg")
    _seed(registry, workdir, "cfg:v1", img)
    fault_proxy.add(Fault("flood", path=f"/blobs/{img.config.desc.digest}", method="GET", times=-1))
    with open_store(_via(fault_proxy, "cfg:v1"), registry.options()) as s, pytest.raises(ImageError) as e:
        s.read_manifest(img.config.desc)
    _one_line(e, f"blob {img.config.desc.digest} is too large", f"limit of {img.config.desc.size} bytes")


@pytest.mark.parametrize(
    "fault",
    [
        Fault("resize", path="/blobs/sha256:", method="GET", size_delta=4096),
        Fault("resize", path="/blobs/sha256:", method="GET", size_delta=-10),
        Fault("flood", path="/blobs/sha256:", method="GET"),
        Fault("flood", path="/blobs/sha256:", method="GET", flood_length=1 << 40),
    ],
    ids=["longer", "shorter", "endless", "claims-1TiB"],
)
def test_blob_that_lies_about_its_size_is_refused(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, fault: Fault
) -> None:
    img = _img("lie")
    _seed(registry, workdir, "lie:v1", img)
    fault.times = -1
    fault_proxy.add(fault)
    out = workdir / "out" / "blob"
    started = time.monotonic()
    with (
        open_store(_via(fault_proxy, "lie:v1"), registry.options()) as s,
        pytest.raises(DigestMismatchError) as e,
    ):
        s.fetch_blob(img.layers[0].desc, out)
    _one_line(e, img.layers[0].desc.digest)
    assert time.monotonic() - started < QUICK
    assert list(out.parent.iterdir()) == []  # neither the blob nor its temp file


@pytest.fixture
def auth_registry(registry_factory) -> RegistryServer:
    return registry_factory("htpasswd")


def test_redirects_are_followed_without_credentials_to_another_host(
    auth_registry: RegistryServer, registry: RegistryServer, workdir: Path
) -> None:
    """As Docker and containerd: blob GETs may be redirected (to storage); Authorization goes along
    only to the same host. Here the registry with credentials redirects blobs to a second host
    (127.0.0.2) that serves them without authentication."""
    img = _img("redir")
    _seed(auth_registry, workdir, "redir:v1", img)
    _seed(registry, workdir, "redir:v1", img)
    with FaultProxy(auth_registry.host) as front, FaultProxy(registry.host, bind="127.0.0.2") as storage:
        config = write_docker_config(workdir / "front-config", basic_auths(front.host, USER, PASSWORD))
        layer = img.layers[0].desc.digest
        front.add(
            Fault("redirect", path=f"/blobs/{layer}", method="GET", location=f"http://{storage.host}{{path}}")
        )
        # Same host: the redirect keeps the credentials (the registry would refuse the request otherwise).
        config_blob = f"/blobs/{img.config.desc.digest}"
        front.add(
            Fault(
                "redirect",
                path=config_blob + "$",
                method="GET",
                times=-1,
                location=f"http://{front.host}{{path}}?again",
            )
        )
        with open_store(_via(front, "redir:v1"), auth_registry.options(docker_config=config)) as s:
            # First the config (answers the registry's challenge), then the layer, sent with credentials.
            assert s.read_manifest(img.config.desc) == img.config.data
            s.fetch_blob(img.layers[0].desc, workdir / "layer")
        assert (workdir / "layer").read_bytes() == img.layers[0].data
        *_, again = [h for h in front.hits if h.path.endswith(config_blob + "?again")]
        assert again.status == 200 and again.headers["authorization"].startswith("Basic ")
        (to_storage,) = [h for h in front.hits if h.path.endswith(f"/blobs/{layer}")]
        assert to_storage.fault == "redirect" and to_storage.headers["authorization"].startswith("Basic ")
        assert [h.status for h in storage.hits] == [200]
        assert "authorization" not in storage.hits[0].headers


def test_a_redirect_target_asking_for_credentials_does_not_get_them(
    auth_registry: RegistryServer, workdir: Path
) -> None:
    """The storage host answers 401 with a Bearer challenge of its own (realm on that host too): the
    registry's credentials are not sent to it, nor to its realm (containerd keys credentials by the
    host that asks)."""
    img = _img("evil")
    _seed(auth_registry, workdir, "evil:v1", img)
    with FaultProxy(auth_registry.host) as front, FaultProxy(auth_registry.host, bind="127.0.0.2") as evil:
        config = write_docker_config(workdir / "front-config", basic_auths(front.host, USER, PASSWORD))
        front.add(
            Fault("redirect", path="/blobs/sha256:", method="GET", location=f"http://{evil.host}{{path}}")
        )
        challenge = f'Bearer realm="http://{evil.host}/token",service="evil"'
        evil.add(Fault("answer", times=-1, status=401, headers={"WWW-Authenticate": challenge}))
        with (
            open_store(_via(front, "evil:v1"), auth_registry.options(docker_config=config)) as s,
            pytest.raises(AuthError) as e,
        ):
            s.fetch_blob(img.layers[0].desc, workdir / "layer")
    _one_line(e, "redirected to 127.0.0.2", "asks for authentication")
    assert evil.hits and all("authorization" not in h.headers for h in evil.hits)
    assert not any("/token" in h.path for h in evil.hits)


GARBAGE = [
    (Fault("answer", status=200, body=b"<html>not json</html>"), "returned no token"),
    (Fault("answer", status=200, body=b'["token"]'), "returned no token"),
    (Fault("answer", status=200, body=b'{"token": 42}'), "returned no token"),
    (Fault("answer", status=200, body=b'{"token": "abc\\r\\nX-Injected: 1"}'), "malformed token"),
    (Fault("answer", status=200, body=b'{"token": "has space"}'), "malformed token"),
    (Fault("answer", status=200, body=b"\xff\xfe\x00garbage"), "returned no token"),
    (Fault("answer", status=418, body=b"teapot"), "token server answered HTTP 418"),
    (Fault("flood"), "answer is too large"),
]


@pytest.mark.parametrize(("fault", "message"), GARBAGE, ids=[m for _, m in GARBAGE])
def test_token_server_answering_garbage(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, fault: Fault, message: str
) -> None:
    """The realm is on another host than the registry: as Docker, the credentials go to the realm
    (it is where they are exchanged for a token), and whatever it answers is a one-line AuthError."""
    img = _img("tok")
    _seed(registry, workdir, "tok:v1", img)
    with FaultProxy(registry.host, bind="127.0.0.2") as realm:
        fault.times = -1
        realm.add(fault)
        challenge = f'Bearer realm="http://{realm.host}/token",service="svc"'
        fault_proxy.add(
            Fault("answer", path="/manifests/", times=1, status=401, headers={"WWW-Authenticate": challenge})
        )
        config = write_docker_config(workdir / "cfg", basic_auths(fault_proxy.host, USER, PASSWORD))
        with (
            open_store(_via(fault_proxy, "tok:v1"), registry.options(docker_config=config)) as s,
            pytest.raises(AuthError) as e,
        ):
            s.resolve()
    msg = _one_line(e, message)
    assert "X-Injected" not in msg and "abc" not in msg
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert realm.hits and all(h.headers.get("authorization") == expected for h in realm.hits)
    assert PASSWORD not in msg


def test_redirect_loops_and_non_http_redirects_are_one_line_errors(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path
) -> None:
    img = _img("loop")
    _seed(registry, workdir, "loop:v1", img)
    fault_proxy.add(
        Fault(
            "redirect", path="/blobs/", method="GET", times=-1, location=f"http://{fault_proxy.host}{{path}}"
        )
    )
    with open_store(_via(fault_proxy, "loop:v1"), registry.options()) as s, pytest.raises(RegistryError) as e:
        s.fetch_blob(img.layers[0].desc, workdir / "out")
    _one_line(e, "too many redirects")
    assert len(fault_proxy.hits) <= 21  # httpx's bound, not retried

    fault_proxy.clear()
    fault_proxy.add(Fault("redirect", path="/manifests/", times=-1, location="file:///etc/shadow"))
    with open_store(_via(fault_proxy, "loop:v1"), registry.options()) as s, pytest.raises(RegistryError) as e:
        s.resolve()
    _one_line(e, "redirected to an unsupported URL")
    assert len(fault_proxy.hits) == 1


def _zstd_bomb(decoded: int) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(b"\0" * decoded)


@pytest.mark.parametrize("path", ["/manifests/", "/blobs/sha256:"])
def test_content_encoding_not_asked_for_is_refused(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, path: str
) -> None:
    """The client asks for no transfer encoding (blobs are compressed already); a zstd body would be
    decoded by httpx a chunk at a time with no bound (a 64 KiB chunk can hold gigabytes)."""
    img = _img("enc")
    _seed(registry, workdir, "enc:v1", img)
    bomb = _zstd_bomb(64 << 20)
    fault_proxy.add(
        Fault(
            "answer",
            path=path,
            method="GET",
            times=-1,
            status=200,
            body=bomb,
            headers={"Content-Encoding": "zstd"},
        )
    )
    with open_store(_via(fault_proxy, "enc:v1"), registry.options()) as s, pytest.raises(RegistryError) as e:
        if path == "/manifests/":
            s.resolve()
        else:
            s.fetch_blob(img.layers[0].desc, workdir / "out")
    _one_line(e, "Content-Encoding zstd")
    assert fault_proxy.hits[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        ('Bearer realm="/token",service="svc"', "invalid realm '/token'"),
        ('Bearer realm="file:///etc/passwd"', "invalid realm 'file:///etc/passwd'"),
        ('Bearer realm="http://"', "invalid realm 'http://'"),
        ('Bearer service="svc"', "Bearer challenge without a realm"),
        ("Negotiate abc", "unsupported authentication"),
        ("", "unsupported authentication"),
    ],
)
def test_garbage_challenges_are_one_line_errors(
    registry: RegistryServer, fault_proxy: FaultProxy, workdir: Path, challenge: str, message: str
) -> None:
    fault_proxy.add(
        Fault("answer", path="/manifests/", times=-1, status=401, headers={"WWW-Authenticate": challenge})
    )
    config = write_docker_config(workdir / "cfg", basic_auths(fault_proxy.host, USER, PASSWORD))
    with (
        open_store(_via(fault_proxy, "chal:v1"), registry.options(docker_config=config)) as s,
        pytest.raises(AuthError) as e,
    ):
        s.resolve()
    _one_line(e, message)
    assert len(fault_proxy.hits) == 1
