"""Errors of the image package: one line each, naming the image, blob or registry concerned.

Messages never contain credentials (passwords, tokens, `auth` strings): they are built from
registry names, repositories, digests and HTTP statuses only.
"""

from __future__ import annotations

from ctr_remote.errors import CtrRemoteError


class ImageError(CtrRemoteError):
    """Anything that went wrong reading or writing an image. `status` is the HTTP status of the
    registry answer that caused it, when there was one (callers may act on 404 or 401)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidReferenceError(ImageError):
    """An image reference that cannot be parsed, or that needs an option (`--plain-http`)."""


class NotFoundError(ImageError):
    """The reference, manifest or blob does not exist where it was looked for."""


class AuthError(ImageError):
    """Credentials missing, wrong, refused, or a credential helper that failed."""


class DigestMismatchError(ImageError):
    """Content whose digest or size differs from its descriptor."""


class RetriesExhaustedError(ImageError):
    """A transient failure (connection, 429, 5xx) persisted past the retry bound."""


class RegistryError(ImageError):
    """A registry answered something the distribution spec does not allow here."""


class LayoutError(ImageError):
    """An OCI image layout directory that is missing, malformed or unwritable."""


class UnsupportedMediaTypeError(ImageError):
    """A media type this tool cannot handle (e.g. Docker schema 1 manifests)."""


class PlatformError(ImageError):
    """A platform specifier that cannot be parsed, or no manifest matching the requested platforms."""
