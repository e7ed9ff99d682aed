"""Image references as upstream's old `optimize` (v0.1-v0.3) reads them.

- `ubuntu`, `ubuntu:22.04`, `ghcr.io/org/app@sha256:...`, `host:5000/repo:tag@sha256:...`:
  a registry reference with Docker's defaults (`docker.io`, `library/`, `latest`), over HTTPS.
- `http://host:5000/repo:tag`: plain HTTP; refused unless `plain_http=True` (`--plain-http`).
- `local:///abs/dir`, `local://rel/dir`: an OCI image layout directory; `local://DIR:NAME` picks (or
  writes) the image whose `org.opencontainers.image.ref.name` is NAME, as skopeo's `oci:DIR:NAME` does.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from ctr_remote.image.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_LAYOUT_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._@+:-]*$")


class Kind(enum.Enum):
    REGISTRY = "registry"
    LAYOUT = "layout"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: a repository in a registry, or an OCI layout directory.

    Registry: `registry` (`docker.io`, `host:port`), `repository` (`library/ubuntu`), `tag` and/or
    `digest` (at least one; `tag` defaults to `latest`), `plain_http`.
    Layout: `path` (the directory) and `tag` (the ref.name to select or write, may be None).
    """

    kind: Kind
    original: str
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    plain_http: bool = False
    path: Path | None = None

    @property
    def is_layout(self) -> bool:
        return self.kind is Kind.LAYOUT

    @property
    def api_host(self) -> str:
        """Host[:port] the HTTP API is served on (`docker.io` is `registry-1.docker.io`)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.api_host}"

    @property
    def name(self) -> str:
        """`registry/repository` (or the layout path): used in messages."""
        if self.is_layout:
            return f"local://{self.path}"
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(**{**self.__dict__, "tag": tag})

    def __str__(self) -> str:
        if self.is_layout:
            return f"local://{self.path}" + (f":{self.tag}" if self.tag else "")
        s = ("http://" if self.plain_http else "") + self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def parse_reference(s: str, *, plain_http: bool = False) -> Reference:
    """Parse an image reference; raises InvalidReferenceError with a one-line message."""
    if s.startswith("local://"):
        return _parse_layout(s)
    rest = s
    insecure = False
    if s.startswith("http://"):
        rest = s[len("http://") :]
        if not plain_http:
            host = rest.split("/", 1)[0]
            raise InvalidReferenceError(
                f"--plain-http option must be specified to connect to {host!r} using HTTP"
            )
        insecure = True
    elif s.startswith("https://"):
        rest = s[len("https://") :]
    elif "://" in s:
        raise InvalidReferenceError(
            f"invalid reference {s!r}: unknown scheme (use http://, local:// or none)"
        )
    registry, repository, tag, digest = _split(s, rest)
    return Reference(
        kind=Kind.REGISTRY,
        original=s,
        registry=registry,
        repository=repository,
        tag=tag,
        digest=digest,
        plain_http=insecure,
    )


def _split(original: str, rest: str) -> tuple[str, str, str | None, str | None]:
    def bad(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"invalid reference {original!r}: {why}")

    if not rest:
        raise bad("empty")
    digest = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise bad(f"invalid digest {digest!r}")
        if not digest.startswith(("sha256:", "sha512:")) or len(digest.split(":")[1]) not in (64, 128):
            raise bad(f"unsupported digest {digest!r} (sha256 or sha512 expected)")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise bad(f"invalid tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, repository = first, remainder
        if not _DOMAIN.match(registry):
            raise bad(f"invalid registry {registry!r}")
        if registry == "index.docker.io":
            registry = DOCKER_HUB
    else:
        registry, repository = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if repository.lower() != repository:
        raise bad("repository name must be lowercase")
    if not _REPOSITORY.match(repository):
        raise bad(f"invalid repository name {repository!r}")
    if len(registry) + 1 + len(repository) > 255:
        raise bad("repository name must not be more than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return registry, repository, tag, digest


def _parse_layout(s: str) -> Reference:
    body = s[len("local://") :]
    name = None
    # `DIR:NAME` as skopeo's `oci:` transport; a colon inside a path component before a `/` is a path.
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail:
        if not _LAYOUT_NAME.match(tail):
            raise InvalidReferenceError(f"invalid reference {s!r}: invalid image name {tail!r}")
        body, name = head, tail
    if not body:
        raise InvalidReferenceError(f"invalid reference {s!r}: empty directory path")
    return Reference(kind=Kind.LAYOUT, original=s, path=Path(body), tag=name)
