"""Parsing manifests, indexes, configs, docker config credentials and auth challenges."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ctr_remote.image import (
    Descriptor,
    ImageError,
    Index,
    Manifest,
    Platform,
    UnsupportedMediaTypeError,
    parse_config,
    parse_index,
    parse_manifest,
)
from ctr_remote.image import mediatypes as mt
from ctr_remote.image.auth import parse_challenge
from ctr_remote.image.credentials import load_credentials

pytestmark = pytest.mark.unit

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_manifest_round_trip_keeps_unknown_fields() -> None:
    m = Manifest(
        mt.DOCKER_MANIFEST,
        Descriptor(mt.DOCKER_CONFIG, D1, 10),
        [
            Descriptor(
                mt.DOCKER_LAYER_GZIP, D2, 20, annotations={"containerd.io/snapshot/stargz/toc.digest": D1}
            )
        ],
        extra={"subject": {"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 1}},
    )
    again = parse_manifest(m.to_bytes())
    assert again == m
    assert json.loads(m.to_bytes())["subject"]["digest"] == D1


def test_index_round_trip_with_platforms() -> None:
    idx = Index(
        mt.OCI_INDEX,
        [Descriptor(mt.OCI_MANIFEST, D1, 5, platform=Platform("linux", "arm", "v7", os_features=("x",)))],
        annotations={"k": "v"},
    )
    assert parse_index(idx.to_bytes()) == idx


@pytest.mark.parametrize(
    ("doc", "error", "match"),
    [
        (b"{", ImageError, "invalid JSON"),
        (b"[]", ImageError, "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), UnsupportedMediaTypeError, "schema 1"),
        (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}).encode(), ImageError, "no layers"),
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain", "layers": []}).encode(),
         UnsupportedMediaTypeError, "text/plain"),
        (json.dumps({"schemaVersion": 2, "layers": [], "config": {"digest": "sha256:x", "size": 1}}).encode(),
         ImageError, "invalid digest"),
        (json.dumps({"schemaVersion": 2, "layers": [], "config": {"digest": D1, "size": -1}}).encode(),
         ImageError, "invalid size"),
        (json.dumps({"schemaVersion": 2, "manifests": []}).encode(), ImageError, "is an index"),
    ],
)  # fmt: skip
def test_bad_manifests(doc: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match) as e:
        parse_manifest(doc)
    assert "\n" not in str(e.value)


def test_config_views() -> None:
    cfg = parse_config(
        json.dumps({"os": "linux", "architecture": "arm64", "config": {"Env": ["A=1"]}}).encode()
    )
    assert cfg.platform == Platform("linux", "arm64")
    assert cfg.container_config["Env"] == ["A=1"] and cfg.diff_ids == []
    new = cfg.with_diff_ids([D1])
    assert json.loads(new.to_bytes())["rootfs"] == {"type": "layers", "diff_ids": [D1]}
    assert new.container_config["Env"] == ["A=1"]
    assert cfg.diff_ids == [] and "rootfs" not in cfg.raw  # the source config is left as read


def test_challenges() -> None:
    ch = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert ch is not None and ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.params == {"realm": "Registry Realm"}
    assert parse_challenge("") is None


def test_docker_config_key_spellings(tmp_path: Path) -> None:
    def auth(u: str, p: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": auth("hub", "h"),
                    "https://127.0.0.1:5000": auth("local", "l"),
                    "ghcr.io": {"username": "gh", "password": "g"},
                    "quay.io": {"identitytoken": "refresh"},
                }
            }
        )
    )
    got = {
        r: load_credentials(r, tmp_path)
        for r in ("docker.io", "127.0.0.1:5000", "ghcr.io", "quay.io", "x.io")
    }
    assert (got["docker.io"].username, got["docker.io"].password) == ("hub", "h")
    assert (got["127.0.0.1:5000"].username, got["127.0.0.1:5000"].password) == ("local", "l")
    assert (got["ghcr.io"].username, got["ghcr.io"].password) == ("gh", "g")
    assert got["quay.io"].identity_token == "refresh"
    assert got["x.io"] is None
    assert "refresh" not in repr(got["quay.io"]) and "'h'" not in repr(got["docker.io"])
    assert load_credentials("docker.io", tmp_path / "absent") is None
