"""Content digests (`algorithm:hex`): computing them and checking content against descriptors."""

from __future__ import annotations

import hashlib
import re

from ctr_remote.image.errors import DigestMismatchError, ImageError

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def validate_digest(digest: str) -> str:
    """Return `digest` if it is a well-formed sha256/sha512 digest, else raise ImageError."""
    if not _DIGEST.match(digest):
        raise ImageError(f"invalid digest {digest!r}")
    return digest


def hasher(digest: str) -> hashlib._Hash:
    """A fresh hash object for the algorithm of `digest`."""
    return hashlib.new(validate_digest(digest).split(":", 1)[0])


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def encoded(digest: str) -> str:
    """The hex part of a digest (the file name under `blobs/<alg>/`)."""
    return validate_digest(digest).split(":", 1)[1]


def algorithm(digest: str) -> str:
    return validate_digest(digest).split(":", 1)[0]


def check(what: str, expected_digest: str, expected_size: int, actual_digest: str, actual_size: int) -> None:
    """Raise DigestMismatchError naming `what` unless digest and size both match."""
    if actual_size != expected_size:
        raise DigestMismatchError(
            f"{what} {expected_digest}: size mismatch: expected {expected_size} bytes, got {actual_size}"
        )
    if actual_digest != expected_digest:
        raise DigestMismatchError(f"{what} {expected_digest}: digest mismatch: content is {actual_digest}")


def verify_bytes(what: str, data: bytes, expected_digest: str, expected_size: int) -> None:
    h = hasher(expected_digest)
    h.update(data)
    check(what, expected_digest, expected_size, f"{h.name}:{h.hexdigest()}", len(data))
