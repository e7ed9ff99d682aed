"""Authentication against the real registry: htpasswd Basic, token-server Bearer, credential
helpers, TLS from a test CA. Every failure is one line, names registry and repository, and no
secret ever reaches an error message or the log."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path

import pytest

from ctr_remote.errors import CtrRemoteError
from ctr_remote.image import AuthError, ImageError, copy_image, open_store
from ctr_remote.log import configure
from tests.helpers.oci import BuiltImage, build_image, push
from tests.helpers.registry import PASSWORD, USER, RegistryServer, basic_auths, write_docker_config


def _img(tag: str) -> BuiltImage:
    return build_image([{"f": tag.encode()}])


def _one_line(e: CtrRemoteError, *must: str) -> str:
    msg = str(e)
    assert "\n" not in msg
    for m in must:
        assert m in msg, msg
    for secret in (PASSWORD, "wrong-password", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()):
        assert secret not in msg
    return msg


def _helper(bindir: Path, name: str, script: str) -> None:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_push_and_pull_with_credentials(registry_factory, workdir: Path, mode: str) -> None:
    reg: RegistryServer = registry_factory(mode)
    img = _img(mode)
    with open_store(reg.reference("private/app:v1"), reg.options()) as s:
        push(s, img, workdir / "build")
    with open_store(reg.reference("private/app:v1"), reg.options()) as s:
        assert s.resolve().digest == img.manifest.desc.digest
        s.fetch_blob(img.layers[0].desc, workdir / "l")
    if mode == "token":
        scopes = [r.scopes for r in reg.token_server.requests if r.status == 200]
        assert ["repository:private/app:pull,push"] in scopes  # the push
        assert ["repository:private/app:pull"] in scopes  # the pull asks for no more than it needs
        assert all(r.user == USER for r in reg.token_server.requests)


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_wrong_password(registry_factory, workdir: Path, mode: str) -> None:
    reg: RegistryServer = registry_factory(mode)
    cfg = write_docker_config(workdir / "bad", basic_auths(reg.host, USER, "wrong-password"))
    with (
        open_store(reg.reference("private/app:v1"), reg.options(docker_config=cfg)) as s,
        pytest.raises(AuthError) as e,
    ):
        push(s, _img("x"), workdir / "build")
    _one_line(e.value, reg.host, "private/app")


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_missing_credentials_for_a_private_repo(registry_factory, workdir: Path, mode: str) -> None:
    reg: RegistryServer = registry_factory(mode)
    with open_store(reg.reference("private/app:v1"), reg.options()) as s:
        push(s, _img("x"), workdir / "build")
    empty = write_docker_config(workdir / "empty", {"auths": {}})
    with (
        open_store(reg.reference("private/app:v1"), reg.options(docker_config=empty)) as s,
        pytest.raises(AuthError) as e,
    ):
        s.resolve()
    msg = _one_line(e.value, reg.host, "private/app")
    assert "authentication required" in msg and "no credentials" in msg


def test_anonymous_token_for_public_pull(registry_factory, workdir: Path) -> None:
    reg: RegistryServer = registry_factory("token")
    img = _img("public")
    with open_store(reg.reference("public/app:v1"), reg.options()) as s:
        push(s, img, workdir / "build")
    empty = write_docker_config(workdir / "empty", {})
    with open_store(reg.reference("public/app:v1"), reg.options(docker_config=empty)) as s:
        assert s.resolve().digest == img.manifest.desc.digest
        # anonymous tokens carry pull only: pushing is refused with a clear message
        with pytest.raises(AuthError) as e:
            push(s, _img("other"), workdir / "build2")
    _one_line(e.value, reg.host, "public/app")
    assert any(r.user is None and r.status == 200 for r in reg.token_server.requests)


def test_identity_token_uses_the_oauth2_refresh_flow(registry_factory, workdir: Path) -> None:
    reg: RegistryServer = registry_factory("token")
    reg.token_server.refresh_tokens["refresh-me"] = USER
    cfg = write_docker_config(workdir / "idt", {"auths": {reg.host: {"identitytoken": "refresh-me"}}})
    img = _img("idt")
    with open_store(reg.reference("private/idt:v1"), reg.options(docker_config=cfg)) as s:
        push(s, img, workdir / "build")
        assert s.resolve().digest == img.manifest.desc.digest
    cfg = write_docker_config(workdir / "idt-bad", {"auths": {reg.host: {"identitytoken": "stale"}}})
    with (
        open_store(reg.reference("private/idt:v1"), reg.options(docker_config=cfg)) as s,
        pytest.raises(AuthError) as e,
    ):
        s.resolve()
    _one_line(e.value, reg.host, "private/idt", "refused")
    assert "stale" not in str(e.value)


@pytest.mark.parametrize("kind", ["credHelpers", "credsStore"])
def test_credential_helper(registry_factory, workdir: Path, monkeypatch, kind: str) -> None:
    reg: RegistryServer = registry_factory("htpasswd")
    bindir = workdir / "bin"
    # the helper answers only for our registry and checks it is asked with `get`
    _helper(
        bindir,
        "testhelper",
        f'[ "$1" = get ] || exit 3\nread server\n[ "$server" = "{reg.host}" ] || '
        '{ echo "credentials not found in native keychain"; exit 1; }\n'
        f'echo \'{{"ServerURL":"{reg.host}","Username":"{USER}","Secret":"{PASSWORD}"}}\'\n',
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    config = (
        {"credHelpers": {reg.host: "testhelper"}} if kind == "credHelpers" else {"credsStore": "testhelper"}
    )
    cfg = write_docker_config(workdir / "cfg", config)
    img = _img(kind)
    with open_store(reg.reference("helped/app:v1"), reg.options(docker_config=cfg)) as s:
        push(s, img, workdir / "build")
        assert s.resolve().digest == img.manifest.desc.digest


def test_failing_credential_helper(registry_factory, workdir: Path, monkeypatch) -> None:
    reg: RegistryServer = registry_factory("htpasswd")
    bindir = workdir / "bin"
    _helper(bindir, "broken", 'echo "keychain is locked" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cfg = write_docker_config(workdir / "cfg", {"credHelpers": {reg.host: "broken"}})
    with (
        open_store(reg.reference("helped/app:v1"), reg.options(docker_config=cfg)) as s,
        pytest.raises(AuthError) as e,
    ):
        s.resolve()
    _one_line(e.value, "docker-credential-broken", reg.host, "keychain is locked")
    cfg = write_docker_config(workdir / "cfg2", {"credsStore": "absent-helper"})
    with (
        open_store(reg.reference("helped/app:v1"), reg.options(docker_config=cfg)) as s,
        pytest.raises(AuthError) as e,
    ):
        s.resolve()
    _one_line(e.value, "docker-credential-absent-helper", "not found")


def test_tls_needs_the_registry_ca(registry_factory, workdir: Path) -> None:
    reg: RegistryServer = registry_factory("tls")
    img = _img("tls")
    with open_store(reg.reference("secure/app:v1"), reg.options()) as s:
        push(s, img, workdir / "build")
    with (
        open_store(reg.reference("secure/app:v1"), reg.options(certs_dir=workdir / "no-certs")) as s,
        pytest.raises(ImageError) as e,
    ):
        s.resolve()
    _one_line(e.value, "TLS", reg.host)


def test_credentials_never_logged(registry_factory, workdir: Path) -> None:
    log = io.StringIO()
    configure(debug=True, stream=log)
    try:
        for mode in ("htpasswd", "token"):
            reg: RegistryServer = registry_factory(mode)
            with open_store(reg.reference("private/log:v1"), reg.options()) as s:
                push(s, _img(mode), workdir / f"build-{mode}")
                s.resolve()
            bad = write_docker_config(workdir / f"bad-{mode}", basic_auths(reg.host, USER, "wrong-password"))
            with (
                open_store(reg.reference("private/log:v1"), reg.options(docker_config=bad)) as s,
                pytest.raises(AuthError),
            ):
                s.resolve()
    finally:
        configure()
    text = log.getvalue()
    assert "registry request" in text  # debug logging was on
    for secret in (
        PASSWORD,
        "wrong-password",
        base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        "Bearer",
    ):
        assert secret not in text
    assert json.dumps(PASSWORD) not in text


def test_tls_client_certificate_from_certs_d(registry_factory, workdir: Path) -> None:
    reg: RegistryServer = registry_factory("tls", client_auth=True)
    img = _img("mtls")
    with open_store(reg.reference("mtls/app:v1"), reg.options()) as s:
        push(s, img, workdir / "build")
        assert s.resolve().digest == img.manifest.desc.digest
    # the same CA but no client pair: the registry refuses the handshake
    bare = workdir / "ca-only"
    (bare / reg.host).mkdir(parents=True)
    (bare / reg.host / "ca.crt").write_bytes((reg.certs_dir / reg.host / "ca.crt").read_bytes())
    with (
        open_store(reg.reference("mtls/app:v1"), reg.options(certs_dir=bare)) as s,
        pytest.raises(ImageError) as e,
    ):
        s.resolve()
    _one_line(e.value, reg.host)


def test_cross_repository_mount_with_token_auth(registry_factory, workdir: Path) -> None:
    reg: RegistryServer = registry_factory("token")
    img = _img("mount")
    with open_store(reg.reference("team/base:v1"), reg.options()) as s:
        push(s, img, workdir / "build")
    src_ref = reg.reference("team/base:v1")
    with (
        open_store(src_ref, reg.options()) as src,
        open_store(reg.reference("team/derived:v1"), reg.options(mount_from=src_ref)) as dst,
    ):
        copy_image(src, dst, workdir / "cache")
        assert dst.resolve().digest == img.manifest.desc.digest
    # the mount asked for push on the target and pull on the source, in one token
    assert ["repository:team/derived:pull,push", "repository:team/base:pull"] in [
        r.scopes for r in reg.token_server.requests
    ]
