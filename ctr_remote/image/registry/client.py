"""The HTTP side of a registry: httpx with authentication, retries, backoff and abort.

Every request goes through `RegistryClient.request`, the one place for auth challenges and retries:
connection errors, 429 and 5xx are retried with exponential backoff up to `RegistryOptions.retries`
times (Retry-After honoured, capped at `backoff_max`); a 401 is answered once (Basic or Bearer).
Requests take a CancelToken: once it is set no request is sent any more, backoff stops, and a
request blocked on the network is woken by shutting down this client's connections.
A refused connection is retried only `REFUSED_RETRIES` times: nothing listens, and waiting longer
rarely changes that (resets, timeouts, 429 and 5xx keep the full `RegistryOptions.retries`).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import structlog

from ctr_remote import __version__
from ctr_remote.cancel import CancelToken
from ctr_remote.image.auth import Authenticator, RegistryAuth
from ctr_remote.image.errors import (
    AuthError,
    DigestMismatchError,
    ImageError,
    NotFoundError,
    RegistryError,
    RetriesExhaustedError,
)
from ctr_remote.image.files import CHUNK
from ctr_remote.image.reference import Reference
from ctr_remote.image.registry.options import RegistryOptions

log = structlog.get_logger(__name__)

# Documents read into memory are capped while they arrive, before more is read. Manifests and
# indexes: containerd's resolver accepts up to its MaxManifestSize (4*1048*1048 bytes) and the
# distribution registry stores nothing over 4 MiB. Image configs are kilobytes (a long history:
# hundreds). Token answers carry a JWT of a few kilobytes.
MAX_MANIFEST_SIZE = 4 * 1048 * 1048
MAX_CONFIG_SIZE = 16 << 20
MAX_TOKEN_RESPONSE_SIZE = 1 << 20
Body = bytes | Callable[[], Iterable[bytes]] | None
REFUSED_RETRIES = 2


def ssl_context(ref: Reference, certs_dir: Path) -> ssl.SSLContext:
    """System CAs, plus `certs_dir/HOST[:PORT]/*.crt` CAs and `*.cert`/`*.key` client pairs, as Docker."""
    ctx = ssl.create_default_context()
    for host in dict.fromkeys([ref.registry, ref.api_host]):
        d = certs_dir / host
        if not d.is_dir():
            continue
        try:
            for ca in sorted(d.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(ca))
            for cert in sorted(d.glob("*.cert")):
                ctx.load_cert_chain(str(cert), str(cert.with_suffix(".key")))
        except (OSError, ssl.SSLError) as e:
            raise ImageError(f"cannot load certificates from {d}: {e}") from None
    return ctx


def _is_tls_failure(e: Exception) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(e) or "CERTIFICATE" in str(e)


def _is_refused(e: Exception) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _line(e: Exception) -> str:
    """An exception's text on one line (some transport errors span several)."""
    return " ".join(str(e).split())[:300]


def _registry_message(resp: httpx.Response) -> str:
    """`CODE: message` from a distribution error body, else the HTTP status."""
    with contextlib.suppress(Exception):
        errors = resp.json().get("errors") or []
        if errors:
            e = errors[0]
            return f"{e.get('code', '')}: {e.get('message', '')}"[:200]
    return f"HTTP {resp.status_code}"


def _retry_after(resp: httpx.Response) -> float | None:
    with contextlib.suppress(ValueError, TypeError):
        return max(0.0, float(resp.headers.get("retry-after")))
    return None


def _content_length(resp: httpx.Response) -> int | None:
    with contextlib.suppress(ValueError, TypeError):
        return int(resp.headers.get("content-length"))
    return None


# Transfer encodings decoded if a server uses them although asked not to: gzip and deflate expand at
# most ~1000:1 per chunk read. zstd and brotli are refused: httpx decodes a whole chunk at once, and a
# 64 KiB zstd chunk can expand to gigabytes.
_DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})


def _check_encoding(resp: httpx.Response, where: str) -> None:
    encoding = resp.headers.get("content-encoding", "")
    if any(e.strip().lower() not in _DECODED_ENCODINGS for e in encoding.split(",")):
        raise RegistryError(f"{where}: the answer has Content-Encoding {encoding}, which was not asked for")


def body_chunks(resp: httpx.Response, where: str) -> Iterator[bytes]:
    """A streamed response's body, decoded; a body that cannot be decoded is a one-line error."""
    _check_encoding(resp, where)
    try:
        yield from resp.iter_bytes()
    except httpx.DecodingError as e:
        raise RegistryError(f"{where}: the answer cannot be decoded ({_line(e)})") from None


def _read_capped(
    resp: httpx.Response, limit: int, too_large: Callable[[str], ImageError], where: str
) -> bytes:
    """The body of a streamed response, given up on (not read further) once it exceeds `limit`."""
    declared = _content_length(resp)
    if declared is not None and declared > limit:
        raise too_large(f"{declared} bytes, more than the limit of {limit}")
    data = bytearray()
    for chunk in body_chunks(resp, where):
        data += chunk
        if len(data) > limit:
            raise too_large(f"more than the limit of {limit} bytes")
    return bytes(data)


def file_range(
    path: Path, offset: int, length: int, cancel: CancelToken | None
) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                if cancel is not None:
                    cancel.check(f"upload of {path}")
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise ImageError(f"{path}: file shrank while uploading")
                left -= len(chunk)
                yield chunk

    return chunks


class RegistryClient:
    """httpx plus auth and retries, for one repository."""

    def __init__(self, ref: Reference, options: RegistryOptions) -> None:
        self.ref = ref
        self.options = options
        verify: ssl.SSLContext | bool = False if ref.plain_http else ssl_context(ref, options.certs_dir)
        self.http = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(options.timeout, connect=min(options.timeout, 30.0)),
            follow_redirects=True,
            # No transfer encoding: blobs are compressed already, and see _DECODED_ENCODINGS.
            headers={"User-Agent": f"ctr-remote/{__version__}", "Accept-Encoding": "identity"},
        )
        self.auth = Authenticator(
            ref.registry, ref.repository, options.config_dir(), self._send_token_request
        )
        # The connections this client opened, so that a cancel can wake requests blocked on them.
        self._streams: weakref.WeakSet[object] = weakref.WeakSet()

    def _trace(self, event: str, info: dict[str, object]) -> None:
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            self._streams.add(info["return_value"])

    def abort(self) -> None:
        """Shut down every connection of this client (from any thread): requests blocked on one
        fail at once with a transport error. Closing alone would not wake a blocked recv."""
        for stream in list(self._streams):
            sock = stream.get_extra_info("socket")  # type: ignore[attr-defined]
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @property
    def where(self) -> str:
        return self.ref.name

    def url(self, path: str) -> str:
        return f"{self.ref.base_url}/v2/{self.ref.repository}/{path}"

    def backoff(
        self, attempt: int, resp: httpx.Response | None, cancel: CancelToken | None = None, what: str = ""
    ) -> None:
        delay = min(self.options.backoff * (2 ** (attempt - 1)), self.options.backoff_max)
        if resp is not None and (after := _retry_after(resp)) is not None:
            delay = min(after, self.options.backoff_max)
        (cancel or CancelToken()).sleep(delay, what or self.where)  # backoff, not synchronisation

    def _send_token_request(self, req: httpx.Request) -> httpx.Response:
        def too_large(size: str) -> ImageError:
            return AuthError(f"{self.where}: the token server's answer is too large ({size})")

        status, headers, data = self.read_document(
            req.method,
            str(req.url),
            scopes=None,
            headers=dict(req.headers),
            body=req.content,
            limit=MAX_TOKEN_RESPONSE_SIZE,
            too_large=too_large,
        )
        return httpx.Response(status, headers=headers, content=data)

    def read_document(
        self,
        method: str,
        url: str,
        *,
        scopes: Sequence[str] | None,
        limit: int,
        too_large: Callable[[str], ImageError],
        headers: dict[str, str] | None = None,
        body: Body = None,
    ) -> tuple[int, httpx.Headers, bytes]:
        """(status, headers, body) of a request whose answer is read into memory, at most `limit`
        bytes of it (a body that breaks off is fetched again, within the retry bound)."""
        failures = 0
        while True:
            resp = self.request(method, url, scopes=scopes, headers=headers, body=body, stream=True)
            try:
                where = f"{method} {httpx.URL(url).path} on {self.ref.api_host}"
                return resp.status_code, resp.headers, _read_capped(resp, limit, too_large, where)
            except httpx.TransportError as e:
                failures += 1
                log.warning("registry answer broke off", method=method, error=type(e).__name__)
                if failures > self.options.retries:
                    raise RetriesExhaustedError(
                        f"{method} {httpx.URL(url).path} on {self.ref.api_host}: giving up after "
                        f"{failures} interrupted answers (last: {type(e).__name__})"
                    ) from None
                self.backoff(failures, None)
            finally:
                resp.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Sequence[str] | None,
        headers: dict[str, str] | None = None,
        body: Body = None,
        stream: bool = False,
        cancel: CancelToken | None = None,
    ) -> httpx.Response:
        """Send with retries on transient failures and one answer to a 401 challenge. The caller
        checks the status (and closes a streamed response). `scopes=None`: no registry auth.
        Once `cancel` is set no request is sent any more, and one in flight is cut off."""
        failures = 0
        path = httpx.URL(url).path
        cancel = cancel or CancelToken()
        what = f"{method} {path} on {self.ref.api_host}"
        auth = RegistryAuth(self.auth, scopes, what) if scopes is not None else None
        while True:
            cancel.check(what)
            content = body() if callable(body) else body
            req = self.http.build_request(
                method, url, headers=headers, content=content, extensions={"trace": self._trace}
            )
            try:
                with cancel.on_cancel(self.abort):
                    resp = self.http.send(req, stream=stream, auth=auth)
            except httpx.TooManyRedirects:
                raise RegistryError(f"{method} {path} on {self.ref.api_host}: too many redirects") from None
            except httpx.UnsupportedProtocol as e:  # e.g. a redirect to file:// or ftp://
                raise RegistryError(
                    f"{method} {path} on {self.ref.api_host}: redirected to an unsupported URL ({_line(e)})"
                ) from None
            except httpx.TransportError as e:
                cancel.check(what)  # the failure may be the cancel's own doing
                if _is_tls_failure(e):
                    raise RegistryError(
                        f"TLS connection to {self.ref.api_host} failed: {_line(e)} "
                        "(plain HTTP registries need http://HOST/... and --plain-http)"
                    ) from None
                failures += 1
                log.warning("registry request failed", method=method, path=path, error=type(e).__name__)
                limit = min(self.options.retries, REFUSED_RETRIES) if _is_refused(e) else self.options.retries
                if failures > limit:
                    raise RetriesExhaustedError(
                        f"{method} {path} on {self.ref.api_host}: giving up after {failures} attempts "
                        f"(last: {type(e).__name__}: {_line(e)})"
                    ) from None
                self.backoff(failures, None, cancel, what)
                continue
            status = resp.status_code
            log.debug("registry request", method=method, path=path, status=status)
            if status == 401 and auth is not None:
                resp.close()
                continue  # the challenge is answered (RegistryAuth): send again, with the answer
            if status == 429 or status >= 500:
                failures += 1
                resp.close()
                log.warning("registry busy or failing", method=method, path=path, status=status)
                if failures > self.options.retries:
                    raise RetriesExhaustedError(
                        f"{method} {path} on {self.ref.api_host}: giving up after {failures} attempts "
                        f"(last: HTTP {status})",
                        status=status,
                    )
                self.backoff(failures, resp, cancel, what)
                continue
            return resp

    def fail(self, resp: httpx.Response, what: str) -> ImageError:
        """The error for an unexpected answer to a request about `what`."""
        if resp.is_stream_consumed is False:
            with contextlib.suppress(Exception):
                resp.read()
        resp.close()
        msg = _registry_message(resp)
        if resp.status_code == 400 and msg.startswith(("DIGEST_INVALID", "SIZE_INVALID")):
            return DigestMismatchError(
                f"{what}: the registry {self.ref.api_host} found the content does not match ({msg})",
                status=400,
            )
        status = resp.status_code
        if status == 404:
            return NotFoundError(f"{what}: not found in {self.where} ({msg})", status=status)
        if status in (401, 403):
            return AuthError(f"access denied to {self.where}: {what} ({msg})", status=status)
        return RegistryError(f"{self.where}: {what}: unexpected answer {msg}", status=status)

    def close(self) -> None:
        self.http.close()
