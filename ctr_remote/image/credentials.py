"""Registry credentials as Docker finds them: `config.json` `credHelpers`, `credsStore`, `auths`.

Secrets live only in `Credentials` (whose repr hides them) and in the Authorization headers built
from them; nothing here logs or puts them in an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ctr_remote.image.errors import AuthError
from ctr_remote.image.reference import DOCKER_HUB

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
HELPER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token (`identitytoken`)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _host_of(key: str) -> str:
    """`https://host:port/v1/` -> `host:port` (config keys come in all these spellings)."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


def _same_registry(key: str, registry: str) -> bool:
    host = _host_of(key)
    if registry == DOCKER_HUB:
        return host in _HUB_ALIASES
    return host == registry


def _helper_server(registry: str) -> str:
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry


def from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get`; None when it has nothing for `registry`."""
    program = f"docker-credential-{helper}"
    path = shutil.which(program)
    if path is None:
        raise AuthError(f"credential helper {program} for {registry} not found in PATH")
    try:
        p = subprocess.run(
            [path, "get"],
            input=_helper_server(registry).encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} timed out for {registry}") from None
    except OSError as e:
        raise AuthError(f"credential helper {program} could not run for {registry}: {e.strerror}") from None
    out = (p.stdout or b"").decode(errors="replace").strip()
    err = (p.stderr or b"").decode(errors="replace").strip()
    if p.returncode != 0:
        said = (out or err).splitlines()[0][:200] if (out or err) else f"exit status {p.returncode}"
        if "credentials not found" in said.lower():
            return None
        raise AuthError(f"credential helper {program} failed for {registry}: {said}")
    try:
        obj = json.loads(out)
        username, secret = str(obj.get("Username") or ""), str(obj.get("Secret") or "")
    except (ValueError, AttributeError):
        raise AuthError(f"credential helper {program} returned invalid output for {registry}") from None
    if username == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


def _from_auths(auths: dict, registry: str, config: Path) -> Credentials | None:
    for key, entry in auths.items():
        if not isinstance(entry, dict) or not _same_registry(key, registry):
            continue
        if entry.get("identitytoken"):
            return Credentials(
                username=str(entry.get("username") or ""), identity_token=entry["identitytoken"]
            )
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise AuthError(f"{config}: invalid auth entry for {registry}") from None
            return Credentials(username=user, password=password)
        if entry.get("username"):
            return Credentials(username=str(entry["username"]), password=str(entry.get("password") or ""))
    return None


def load_credentials(registry: str, config_dir: Path) -> Credentials | None:
    """Credentials for `registry` (`docker.io`, `host:port`) from `config_dir/config.json`, or None."""
    config = config_dir / "config.json"
    try:
        obj = json.loads(config.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AuthError(f"cannot read {config}: {e}") from None
    if not isinstance(obj, dict):
        raise AuthError(f"cannot read {config}: not a JSON object")
    helpers = obj.get("credHelpers") or {}
    for key, helper in helpers.items():
        if _same_registry(key, registry):
            return from_helper(str(helper), registry)
    if obj.get("credsStore"):
        creds = from_helper(str(obj["credsStore"]), registry)
        if creds is not None:
            return creds
    return _from_auths(obj.get("auths") or {}, registry, config)
