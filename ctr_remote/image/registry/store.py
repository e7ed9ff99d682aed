"""A registry repository as an ImageStore: the verbs of the OCI distribution spec.

Blob downloads stream to disk and are checked against their descriptor (a body that breaks off is
resumed with a Range request); uploads stream from disk, monolithic up to `chunk_size` bytes and in
PATCH chunks above, and a broken upload session is restarted once from a fresh one. Transfers take
a CancelToken and stop at their next request, backoff or chunk once it is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import structlog

from ctr_remote.cancel import CancelToken
from ctr_remote.image import mediatypes as mt
from ctr_remote.image.auth import pull_scope, push_scope
from ctr_remote.image.digest import digest_bytes, verify_bytes
from ctr_remote.image.errors import (
    DigestMismatchError,
    ImageError,
    NotFoundError,
    RegistryError,
    RetriesExhaustedError,
    UnsupportedMediaTypeError,
)
from ctr_remote.image.files import copy_verified
from ctr_remote.image.manifest import Descriptor, sniff_media_type
from ctr_remote.image.reference import Reference
from ctr_remote.image.registry.client import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Body,
    RegistryClient,
    body_chunks,
    file_range,
)
from ctr_remote.image.registry.options import RegistryOptions

log = structlog.get_logger(__name__)


class RegistryStore:
    """A repository in a registry."""

    def __init__(self, ref: Reference, options: RegistryOptions) -> None:
        self.reference = ref
        self.options = options
        self._c = RegistryClient(ref, options)
        self._manifests: dict[str, bytes] = {}  # verified manifest bytes by digest (from resolve)

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._c.close()

    @property
    def _read(self) -> list[str]:
        return [pull_scope(self.reference.repository)]

    @property
    def _write(self) -> list[str]:
        return [push_scope(self.reference.repository)]

    # ---- reading

    def _document(
        self, path: str, what: str, limit: int, headers: dict[str, str] | None = None
    ) -> tuple[httpx.Headers, bytes]:
        def too_large(size: str) -> ImageError:
            return ImageError(f"{self.reference.name}: {what} is too large ({size})")

        status, resp_headers, data = self._c.read_document(
            "GET", self._c.url(path), scopes=self._read, headers=headers, limit=limit, too_large=too_large
        )
        if status != 200:
            raise self._c.fail(httpx.Response(status, headers=resp_headers, content=data), what)
        return resp_headers, data

    def _get_manifest(self, ident: str) -> tuple[bytes, str, str | None]:
        headers, data = self._document(
            f"manifests/{ident}", f"manifest {ident}", MAX_MANIFEST_SIZE, {"Accept": mt.MANIFEST_ACCEPT}
        )
        ctype = headers.get("content-type", "").split(";")[0].strip()
        return data, ctype, headers.get("docker-content-digest")

    def resolve(self) -> Descriptor:
        ref = self.reference
        ident = ref.digest or ref.tag or "latest"
        data, ctype, header_digest = self._get_manifest(ident)
        media = ctype if (mt.is_index(ctype) or mt.is_manifest(ctype)) else sniff_media_type(data)
        if media in mt.SCHEMA1_TYPES:
            raise UnsupportedMediaTypeError(f"{ref}: Docker schema 1 manifests are not supported")
        if ref.digest:
            verify_bytes(f"{ref.name}: manifest", data, ref.digest, len(data))
            digest = ref.digest
        else:
            digest = digest_bytes(data)
            if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
                raise DigestMismatchError(
                    f"{ref}: manifest digest mismatch: registry says {header_digest}, content is {digest}"
                )
        self._manifests[digest] = data
        return Descriptor(media, digest, len(data))

    def read_manifest(self, desc: Descriptor) -> bytes:
        document = mt.is_index(desc.media_type) or mt.is_manifest(desc.media_type)
        limit = MAX_MANIFEST_SIZE if document else MAX_CONFIG_SIZE
        if desc.size > limit:
            raise ImageError(
                f"{self.reference.name}: {desc.digest}: {desc.size} bytes is more than the limit of "
                f"{limit} for a {'manifest' if document else 'config'}"
            )
        data = self._manifests.get(desc.digest)
        if data is None:
            if document:
                data = self._get_manifest(desc.digest)[0]
            else:
                # Read no more than the descriptor promises: one byte over is already a mismatch.
                data = self._document(f"blobs/{desc.digest}", f"blob {desc.digest}", desc.size)[1]
        verify_bytes(f"{self.reference.name}: blob", data, desc.digest, desc.size)
        return data

    def fetch_blob(self, desc: Descriptor, dest: Path, *, cancel: CancelToken | None = None) -> None:
        copy_verified(
            self._blob_chunks(desc, cancel or CancelToken()), dest, desc, f"{self.reference.name}: blob"
        )

    def _blob_chunks(self, desc: Descriptor, cancel: CancelToken) -> Iterator[bytes]:
        """The blob's bytes. A body that breaks off mid-way is resumed with a Range request from
        where it stopped (or re-read and the known part skipped, if the registry ignores Range);
        interruptions count against the retry bound."""
        url = self._c.url(f"blobs/{desc.digest}")
        received = failures = 0
        while True:
            headers = {"Range": f"bytes={received}-"} if received else None
            resp = self._c.request("GET", url, scopes=self._read, headers=headers, stream=True, cancel=cancel)
            try:
                if resp.status_code == 206 and received:
                    skip = 0
                elif resp.status_code == 200:
                    skip = received
                else:
                    raise self._c.fail(resp, f"blob {desc.digest}")
                try:
                    for chunk in body_chunks(resp, f"blob {desc.digest} from {self.reference.name}"):
                        if skip:
                            cut = min(skip, len(chunk))
                            chunk, skip = chunk[cut:], skip - cut
                        received += len(chunk)
                        if chunk:
                            yield chunk
                        cancel.check(f"download of blob {desc.digest}")
                    return
                except httpx.TransportError as e:
                    cancel.check(f"download of blob {desc.digest}")
                    failures += 1
                    log.warning(
                        "blob download interrupted", digest=desc.digest, at=received, error=type(e).__name__
                    )
                    if failures > self.options.retries:
                        raise RetriesExhaustedError(
                            f"download of blob {desc.digest} from {self.reference.name}: giving up after "
                            f"{failures} interruptions (last: {type(e).__name__})"
                        ) from None
                    self._c.backoff(failures, None, cancel, f"download of blob {desc.digest}")
            finally:
                resp.close()

    # ---- writing

    def _blob_exists(self, desc: Descriptor, cancel: CancelToken) -> bool:
        resp = self._c.request("HEAD", self._c.url(f"blobs/{desc.digest}"), scopes=self._write, cancel=cancel)
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._c.fail(resp, f"blob {desc.digest}")

    def _mount_source(self) -> Reference | None:
        src = self.options.mount_from
        ref = self.reference
        if src is None or src.is_layout or src.registry != ref.registry or src.repository == ref.repository:
            return None
        return src if src.plain_http == ref.plain_http else None

    def _start_upload(self, desc: Descriptor, cancel: CancelToken) -> str | None:
        """Open an upload session (or mount the blob: then None)."""
        src = self._mount_source()
        url = self._c.url("blobs/uploads/")
        scopes = self._write
        if src is not None:
            url += f"?mount={desc.digest}&from={src.repository}"
            scopes = [*scopes, pull_scope(src.repository)]
        resp = self._c.request(
            "POST", url, scopes=scopes, headers={"Content-Length": "0"}, body=b"", cancel=cancel
        )
        resp.close()
        if resp.status_code == 201 and src is not None:
            log.debug("blob mounted", digest=desc.digest, source=src.repository)
            return None
        if resp.status_code != 202 or "location" not in resp.headers:
            raise self._c.fail(resp, f"upload of blob {desc.digest}")
        return self._location(resp)

    def _location(self, resp: httpx.Response) -> str:
        return str(resp.request.url.join(resp.headers["location"]))

    def _upload(self, src: Path, desc: Descriptor, cancel: CancelToken) -> None:
        location = self._start_upload(desc, cancel)
        if location is None:
            return
        size = src.stat().st_size
        if size != desc.size:
            raise DigestMismatchError(
                f"blob {desc.digest}: {src} has {size} bytes, descriptor says {desc.size}"
            )
        final_body: Body = b""
        if size <= self.options.chunk_size:
            final_body = file_range(src, 0, size, cancel)
            final_len = size
        else:
            offset = 0
            while offset < size:
                n = min(self.options.chunk_size, size - offset)
                resp = self._c.request(
                    "PATCH",
                    location,
                    scopes=self._write,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(n),
                        "Content-Range": f"{offset}-{offset + n - 1}",
                    },
                    body=file_range(src, offset, n, cancel),
                    cancel=cancel,
                )
                resp.close()
                if resp.status_code != 202:
                    raise self._c.fail(resp, f"upload of blob {desc.digest}")
                location = self._location(resp)
                offset += n
            final_len = 0
        url = httpx.URL(location).copy_merge_params({"digest": desc.digest})
        resp = self._c.request(
            "PUT",
            str(url),
            scopes=self._write,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(final_len)},
            body=final_body,
            cancel=cancel,
        )
        resp.close()
        if resp.status_code not in (201, 204):
            raise self._c.fail(resp, f"upload of blob {desc.digest}")

    def check_push_access(self) -> None:
        """Authenticate for push and open an upload session, then cancel it: what every blob upload
        does first, so credentials, permissions and a read-only registry fail here."""
        resp = self._c.request(
            "POST",
            self._c.url("blobs/uploads/"),
            scopes=self._write,
            headers={"Content-Length": "0"},
            body=b"",
        )
        resp.close()
        if resp.status_code != 202 or "location" not in resp.headers:
            raise self._c.fail(resp, "push access check (opening an upload session)")
        # A registry that cannot cancel sessions lets them expire: its answer does not matter.
        with contextlib.suppress(ImageError):
            self._c.request("DELETE", self._location(resp), scopes=self._write).close()

    def push_blob(self, src: Path, desc: Descriptor, *, cancel: CancelToken | None = None) -> None:
        """Skip if present, mount if the source repository is on this registry, else upload. The
        registry checks digest and size when the upload completes (no extra hashing pass here); a
        mismatch is a DigestMismatchError naming the blob."""
        cancel = cancel or CancelToken()
        for attempt in (1, 2):
            if self._blob_exists(desc, cancel):
                return
            try:
                self._upload(src, desc, cancel)
                return
            except (RegistryError, NotFoundError) as e:
                # A broken session (lost PATCH, unknown upload, rejected range): start a fresh one once.
                if attempt == 2:
                    raise
                log.warning("restarting blob upload", digest=desc.digest, error=str(e))

    def push_manifest(self, data: bytes, desc: Descriptor, *, top: bool = False) -> None:
        verify_bytes("manifest", data, desc.digest, desc.size)
        ref = self.reference
        ident = desc.digest
        if top:
            if ref.digest and ref.digest != desc.digest:
                raise ImageError(f"{ref}: the image to push has digest {desc.digest}, not {ref.digest}")
            ident = ref.tag or desc.digest
        resp = self._c.request(
            "PUT",
            self._c.url(f"manifests/{ident}"),
            scopes=self._write,
            headers={"Content-Type": desc.media_type},
            body=data,
        )
        resp.close()
        if resp.status_code not in (200, 201, 202):
            raise self._c.fail(resp, f"push of manifest {desc.digest}")
        said = resp.headers.get("docker-content-digest")
        if said and said != desc.digest:
            raise DigestMismatchError(f"{ref.name}: registry stored manifest {desc.digest} as {said}")
