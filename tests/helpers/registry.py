"""The real `docker-registry` (distribution 2.8), started on a free 127.0.0.1 port for tests.

Modes: `plain` (HTTP, no auth), `htpasswd` (HTTP + Basic), `tls` (HTTPS from a test CA, no auth),
`token` (HTTP + Bearer tokens from `tests.helpers.tokenserver`).

    with start_registry(tmp_path, "plain") as reg:
        ref = reg.ref("app:v1")              # "http://127.0.0.1:PORT/app:v1"
        store = open_store(parse_reference(ref, plain_http=True), reg.options())
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ctr_remote.image import Reference, RegistryOptions, parse_reference
from tests.helpers.pki import CertKey, issue_server_cert, make_ca
from tests.helpers.tokenserver import ISSUER, SERVICE, TokenServer, start_token_server

REGISTRY_BIN = os.environ.get("DOCKER_REGISTRY_BIN", "/usr/bin/docker-registry")
USER, PASSWORD = "tester", "s3cret-Passw0rd"
READY_TIMEOUT = 30.0
MODES = ("plain", "htpasswd", "tls", "token")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_docker_config(directory: Path, config: dict[str, Any]) -> Path:
    """Write `directory/config.json` (a DOCKER_CONFIG dir) and return `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def basic_auths(host: str, user: str, password: str) -> dict[str, Any]:
    return {"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}


@dataclass
class RegistryServer:
    mode: str
    host: str  # 127.0.0.1:PORT
    root: Path  # storage root
    workdir: Path
    process: subprocess.Popen[bytes]
    ca: CertKey | None = None
    certs_dir: Path | None = None  # a Docker certs.d with HOST/ca.crt (tls mode)
    docker_config: Path | None = None  # a DOCKER_CONFIG dir with working credentials (auth modes)
    token_server: TokenServer | None = None
    user: str = USER
    password: str = field(default=PASSWORD, repr=False)

    @property
    def plain_http(self) -> bool:
        return self.mode != "tls"

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"

    def ref(self, repo_tag: str) -> str:
        """A reference string as a user would type it (`http://` for plain-HTTP modes)."""
        return f"{'http://' if self.plain_http else ''}{self.host}/{repo_tag}"

    def reference(self, repo_tag: str) -> Reference:
        return parse_reference(self.ref(repo_tag), plain_http=True)

    def options(self, **kw: Any) -> RegistryOptions:
        """Store options that reach this registry quickly: its certs, its credentials, fast backoff."""
        base = RegistryOptions(
            docker_config=self.docker_config or self.workdir / "no-docker-config",
            certs_dir=self.certs_dir or self.workdir / "no-certs.d",
            backoff=0.01,
            backoff_max=0.05,
            timeout=30.0,
        )
        return replace(base, **kw)

    def skopeo_flags(self, prefix: str = "") -> list[str]:
        """skopeo options for this registry; prefix "src-" or "dest-" for `skopeo copy`."""
        flags = (
            [f"--{prefix}tls-verify=false"]
            if self.plain_http
            else [f"--{prefix}cert-dir={self.certs_dir}/{self.host}"]
        )
        if self.mode in ("htpasswd", "token"):
            flags.append(f"--{prefix}creds={self.user}:{self.password}")
        return flags

    @property
    def log(self) -> Path:
        """The registry's output: warnings, and the access log if it was asked for."""
        return self.workdir / "registry.log"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.stop()


def _wait_ready(reg: RegistryServer, log: Path) -> None:
    """Poll `GET /v2/` until the registry answers (any HTTP status), or fail with its log."""
    ctx = ssl.create_default_context(cafile=str(reg.ca.cert)) if reg.ca else None
    client = reg.certs_dir / reg.host / "client.cert" if reg.certs_dir else None
    if ctx and client and client.exists():
        ctx.load_cert_chain(str(client), str(client.with_suffix(".key")))
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if reg.process.poll() is not None:
            if "address already in use" in log.read_text():
                raise _PortTaken(reg.host)
            raise RuntimeError(
                f"docker-registry exited ({reg.process.returncode}): {log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(reg.url("/v2/"), timeout=2, context=ctx):
                return
        except urllib.error.HTTPError:
            return  # 401 from an auth mode: serving
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"docker-registry not ready after {READY_TIMEOUT}s: {log.read_text()[-2000:]}")
        time.sleep(0.02)  # readiness probe interval


@contextlib.contextmanager
def start_registry(
    workdir: Path,
    mode: str = "plain",
    *,
    ca: CertKey | None = None,
    client_auth: bool = False,
    access_log: bool = False,
) -> Iterator[RegistryServer]:
    """Run a registry in `mode` under `workdir` (storage, config, certs); stopped on exit (the caller
    owns `workdir`). A port taken between our probe and the registry's bind is retried with another.
    `client_auth` (tls mode): the registry demands a client certificate from the CA; one is put in
    `certs_dir/HOST/client.{cert,key}` where Docker looks for it. `access_log`: every request is
    logged to `reg.log` (combined log format), for tests that count what a client fetched."""
    if mode not in MODES:
        raise ValueError(f"unknown registry mode {mode!r}")
    for attempt in range(3):
        reg = _launch(workdir / f"run{attempt}", mode, ca, client_auth, access_log)
        try:
            _wait_ready(reg, reg.log)
        except _PortTaken:
            reg.stop()
            continue
        except BaseException:
            reg.stop()
            raise
        try:
            yield reg
        finally:
            reg.stop()
        return
    raise RuntimeError("docker-registry: no free port after 3 attempts")


class _PortTaken(RuntimeError):
    pass


def _launch(
    workdir: Path, mode: str, ca: CertKey | None, client_auth: bool, access_log: bool
) -> RegistryServer:
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    auth: dict[str, Any] = {}
    http: dict[str, Any] = {}
    token_server = None
    docker_config = None
    certs_dir = None
    port = free_port()
    host = f"127.0.0.1:{port}"
    if mode == "htpasswd":
        htpasswd = workdir / "htpasswd"
        line = subprocess.run(
            ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True, timeout=60
        ).stdout.strip()
        htpasswd.write_text(line + "\n")
        auth = {"htpasswd": {"realm": "ctr-remote-tests", "path": str(htpasswd)}}
    elif mode == "token":
        token_server = start_token_server(workdir / "token-signer", {USER: PASSWORD})
        auth = {
            "token": {
                "realm": token_server.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(token_server.signing.cert),
            }
        }
    elif mode == "tls":
        ca = ca or make_ca(workdir / "ca")
        server = issue_server_cert(ca, workdir / "server-cert")
        http = {"tls": {"certificate": str(server.cert), "key": str(server.key)}}
        certs_dir = workdir / "certs.d"
        (certs_dir / host).mkdir(parents=True)
        shutil.copy(ca.cert, certs_dir / host / "ca.crt")
        if client_auth:
            http["tls"]["clientcas"] = [str(ca.cert)]
            client = issue_server_cert(ca, workdir / "client-cert", "client", usage="clientAuth")
            shutil.copy(client.cert, certs_dir / host / "client.cert")
            shutil.copy(client.key, certs_dir / host / "client.key")
    if mode in ("htpasswd", "token"):
        docker_config = write_docker_config(workdir / "docker-config", basic_auths(host, USER, PASSWORD))
    cfg: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {"addr": host, "secret": "ctr-remote-tests", **http},
        **({"auth": auth} if auth else {}),
    }
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(cfg))
    with (workdir / "registry.log").open("wb") as logf:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return RegistryServer(
        mode=mode, host=host, root=root, workdir=workdir, process=proc, ca=ca, certs_dir=certs_dir,
        docker_config=docker_config, token_server=token_server,
    )  # fmt: skip
