"""Answering a registry's `WWW-Authenticate` challenge: Basic, or Bearer with a token from the realm.

One `Authenticator` per registry store; `RegistryAuth` applies it to a request as an `httpx.Auth`.
Credentials are looked up lazily (only when a challenge asks for them), tokens are cached per scope
set, and every failure is an AuthError naming the registry and repository, never the secret.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from ctr_remote.image.credentials import Credentials, load_credentials
from ctr_remote.image.errors import AuthError

# What may follow "Bearer " in a header: visible ASCII. Anything else (spaces, CR/LF) would be
# header injection, or make the HTTP library fail with the token in its message.
_TOKEN = re.compile(r"[!-~]+")
_PARAM = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
CLIENT_ID = "ctr-remote"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge of a `WWW-Authenticate` header (registries send one)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


class Authenticator:
    """Authorization headers for one registry, from its challenges and the docker config."""

    def __init__(
        self,
        registry: str,
        repository: str,
        config_dir: Path,
        send: Callable[[httpx.Request], httpx.Response],
    ) -> None:
        self.registry = registry
        self._registry = registry
        self._repository = repository
        self._config_dir = config_dir
        self._send = send  # sends a token request (through the client's retry loop)
        self._lock = threading.Lock()
        self._creds_loaded = False
        self._creds: Credentials | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], str] = {}

    @property
    def _where(self) -> str:
        return f"{self._registry}/{self._repository}"

    def credentials(self) -> Credentials | None:
        with self._lock:
            if not self._creds_loaded:
                self._creds = load_credentials(self._registry, self._config_dir)
                self._creds_loaded = True
            return self._creds

    def header(self, scopes: Sequence[str]) -> str | None:
        """The Authorization header to send pre-emptively, if a challenge was already answered."""
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            creds = self._creds
            return creds.basic_header() if creds and not creds.identity_token else None
        token = self._tokens.get(tuple(scopes))
        return f"Bearer {token}" if token else None

    def answer(self, www_authenticate: str | None, scopes: Sequence[str], *, retried: bool) -> None:
        """Prepare credentials for a request that got 401; raises AuthError if it cannot succeed.

        `retried` says the request had already been sent with an answer to a challenge: then the
        registry refused what we sent.
        """
        if retried:
            raise self.refused()
        ch = parse_challenge(www_authenticate or "")
        if ch is None or ch.scheme not in ("basic", "bearer"):
            raise AuthError(
                f"{self._where}: registry asks for unsupported authentication {www_authenticate!r}"
            )
        creds = self.credentials()
        self._challenge = ch
        if ch.scheme == "basic":
            if creds is None or creds.identity_token:
                raise self.missing()
            return
        token = self._fetch_token(ch, scopes, creds)
        with self._lock:
            self._tokens[tuple(scopes)] = token

    def missing(self) -> AuthError:
        return AuthError(
            f"authentication required for {self._where}: no credentials for {self._registry} "
            f"in {self._config_dir / 'config.json'}"
        )

    def refused(self) -> AuthError:
        if self.credentials() is None:
            return self.missing()
        return AuthError(
            f"access denied to {self._where}: the registry refused the credentials for {self._registry}"
        )

    def _fetch_token(self, ch: Challenge, scopes: Sequence[str], creds: Credentials | None) -> str:
        realm = ch.params.get("realm")
        if not realm:
            raise AuthError(f"{self._where}: Bearer challenge without a realm")
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise AuthError(f"{self._where}: Bearer challenge with an invalid realm {realm[:200]!r}")
        service = ch.params.get("service")
        if creds and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": CLIENT_ID,
            }
            if service:
                form["service"] = service
            form["scope"] = " ".join(scopes)
            req = httpx.Request("POST", realm, data=form)
        else:
            params: list[tuple[str, str]] = [("scope", s) for s in scopes]
            if service:
                params.insert(0, ("service", service))
            headers = {"Authorization": creds.basic_header()} if creds else {}
            req = httpx.Request("GET", realm, params=tuple(params), headers=headers)
        try:
            resp = self._send(req)
        except AuthError:
            raise
        if resp.status_code in (401, 403):
            if creds is None:
                raise self.missing()
            raise AuthError(
                f"authentication failed for {self._where}: the token server of {self._registry} "
                f"refused the credentials (HTTP {resp.status_code})"
            )
        if resp.status_code != 200:
            raise AuthError(f"{self._where}: token server answered HTTP {resp.status_code}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token or not isinstance(token, str):
            raise AuthError(f"{self._where}: token server returned no token")
        if not _TOKEN.fullmatch(token):
            raise AuthError(f"{self._where}: token server returned a malformed token")
        return token


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class RegistryAuth(httpx.Auth):
    """One request's registry authentication, as httpx applies it: the Authorization header that an
    earlier answer earned, and on a 401 the answer to the new challenge (credentials loaded, token
    fetched). The answered request is not replayed here, since its body may be a stream already
    sent: the caller sends it again through the same RegistryAuth, which then adds the header, and a
    second 401 means the registry refused what was sent."""

    def __init__(self, authenticator: Authenticator, scopes: Sequence[str], where: str) -> None:
        self._auth = authenticator
        self._scopes = scopes
        self._where = where  # "METHOD PATH on HOST", for the one error of its own
        self.answered = False

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if header := self._auth.header(self._scopes):
            request.headers["Authorization"] = header
        response = yield request
        if response.status_code != 401:
            return
        if not same_origin(response.url, request.url):
            response.close()
            # A redirect target (blob storage) asking for credentials: as containerd, the
            # registry's credentials are only ever answered to the registry's challenges.
            raise AuthError(
                f"{self._where} was redirected to {response.url.host}, which asks for authentication; "
                f"credentials for {self._auth.registry} are not sent there"
            )
        try:
            self._auth.answer(response.headers.get("www-authenticate"), self._scopes, retried=self.answered)
        except AuthError:
            response.close()  # the caller never sees this response
            raise
        self.answered = True
