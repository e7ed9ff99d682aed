"""A token server for the registry's `auth: token` mode: issues RS256 JWTs (with an `x5c` header the
registry verifies against its `rootcertbundle`) for the scopes a user may have.

Policy: users authenticate with Basic (username/password) on GET, or with an identity (refresh)
token on POST (`grant_type=refresh_token`). A known user gets every action they ask for; anonymous
clients get `pull` on repositories under `public/` only. Wrong credentials get 401.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers.pki import CertKey, cert_der, make_ca, sign_rs256

ISSUER = "ctr-remote-test-issuer"
SERVICE = "ctr-remote-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    user: str | None
    scopes: list[str]
    status: int


@dataclass
class TokenServer:
    signing: CertKey
    users: dict[str, str]
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    requests: list[TokenRequest] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _grant(self, user: str | None, scope: str) -> dict | None:
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            return None
        name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
        if user is None:
            actions = [a for a in actions if a == "pull"] if name.startswith("public/") else []
        return {"type": "repository", "name": name, "actions": actions}

    def issue(self, user: str | None, scopes: list[str]) -> str:
        der = cert_der(self.signing.cert)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": [g for s in scopes if (g := self._grant(user, s))],
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{_b64url(sign_rs256(self.signing.key, signing_input.encode()))}"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict, user: str | None, scopes: list[str]) -> None:
                server.requests.append(TokenRequest(user, scopes, status))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                scopes = [s for v in q.get("scope", []) for s in v.split(" ") if s]
                user = None
                authz = self.headers.get("Authorization", "")
                if authz.startswith("Basic "):
                    name, _, password = base64.b64decode(authz[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        self._reply(401, {"details": "invalid credentials"}, name, scopes)
                        return
                    user = name
                token = server.issue(user, scopes)
                self._reply(200, {"token": token, "access_token": token, "expires_in": 300}, user, scopes)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
                user = server.refresh_tokens.get((form.get("refresh_token") or [""])[0])
                if (form.get("grant_type") or [""])[0] != "refresh_token" or user is None:
                    self._reply(401, {"error": "invalid_grant"}, None, scopes)
                    return
                self._reply(
                    200, {"access_token": server.issue(user, scopes), "expires_in": 300}, user, scopes
                )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_token_server(directory: Path, users: dict[str, str]) -> TokenServer:
    ts = TokenServer(signing=make_ca(directory, "ctr-remote test token signer"), users=users)
    ts.start()
    return ts
