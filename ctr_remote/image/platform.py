"""Platforms (`os/arch[/variant]`) and choosing manifests from an index by platform.

Matching follows containerd's strict default matcher, which upstream's `--platform` uses: os and
architecture must be equal after normalisation (`x86_64` is `amd64`, `aarch64` is `arm64`), and the
variant must be equal once defaults are filled in (`arm` defaults to `v7`, `arm64` to `v8`).
"""

from __future__ import annotations

import dataclasses
import platform as _host
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ctr_remote.image.errors import PlatformError

_KNOWN_OS = frozenset(
    {"aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux", "netbsd",
     "openbsd", "plan9", "solaris", "wasip1", "windows"}
)  # fmt: skip
# containerd's isKnownArch: a single-part specifier must name one of these (or a known OS).
_KNOWN_ARCH = frozenset(
    {"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64",
     "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64",
     "s390", "s390x", "sparc", "sparc64", "wasm"}
)  # fmt: skip
# containerd's specifierRe: each part of `os/arch/variant`.
_SPECIFIER = re.compile(r"[A-Za-z0-9_-]+")
_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def normalized(self) -> Platform:
        arch, variant = self.architecture.lower(), (self.variant or "").lower() or None
        if arch in _ARCH_ALIASES:
            arch, alias_variant = _ARCH_ALIASES[arch]
            variant = variant or alias_variant
        if arch == "arm64" and variant in ("v8", "8"):
            variant = None
        elif arch == "arm":
            variant = {"5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant or "", variant) or "v7"
        elif arch == "amd64" and variant == "v1":
            variant = None
        return Platform(self.os.lower(), arch, variant, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        a, b = self.normalized(), other.normalized()
        return (a.os, a.architecture, a.variant) == (b.os, b.architecture, b.variant)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Platform:
        return cls(
            os=str(d.get("os", "")),
            architecture=str(d.get("architecture", "")),
            variant=d.get("variant") or None,
            os_version=d.get("os.version") or None,
            os_features=tuple(d.get("os.features") or ()),
        )


def host_platform() -> Platform:
    """The platform this process runs on (what upstream's default `--platform` means)."""
    machine = _host.machine().lower()
    arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
    if machine.startswith("armv"):
        arch, variant = "arm", "v" + machine[4]
    return Platform("linux", arch, variant).normalized()


def parse_platform(spec: str) -> Platform:
    """`os`, `arch`, `os/arch` or `os/arch/variant`, as containerd's platforms.Parse: each part made of
    letters, digits, `_` and `-`; a single part must be a known OS or architecture (with two or three
    parts, containerd accepts any names, and so do we)."""
    parts = spec.strip().split("/")
    if len(parts) > 3 or not all(_SPECIFIER.fullmatch(p) for p in parts):
        raise PlatformError(f"invalid platform {spec!r}: expected os|arch|os/arch[/variant]")
    host = host_platform()
    if len(parts) == 1:
        p = parts[0].lower()
        if p in _KNOWN_OS:
            plat = Platform(p, host.architecture, host.variant) if p == host.os else Platform(p, "amd64")
        else:
            plat = Platform("linux", p)
            if plat.normalized().architecture not in _KNOWN_ARCH:
                raise PlatformError(f"invalid platform {spec!r}: unknown operating system or architecture")
    else:
        plat = Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    return plat.normalized()


class _HasPlatform(Protocol):
    @property
    def platform(self) -> Platform | None: ...


_Entry = TypeVar("_Entry", bound=_HasPlatform)


def select_manifests(
    manifests: Sequence[_Entry],
    platforms: Sequence[Platform] | None = None,
    *,
    all_platforms: bool = False,
    platform_of: Callable[[_Entry], Platform | None] | None = None,
) -> list[_Entry]:
    """The descriptors of `manifests` (in index order) for the requested platforms.

    `all_platforms` keeps every entry; otherwise an entry is kept when its platform matches one of
    `platforms` (default: the host platform). An entry that names no platform is, as containerd
    does, what its image config says: `platform_of(entry)` (e.g. `transfer.config_platform`) is
    asked, and the entry is returned with that platform filled in (entries must then be
    dataclasses, as Descriptor is). Without `platform_of`, or if it knows none either, such an
    entry only survives `all_platforms`. Raises PlatformError if nothing matches.
    """
    if platform_of is not None:
        manifests = [_with_platform(m, platform_of) for m in manifests]
    if all_platforms:
        return list(manifests)
    wanted = list(platforms) if platforms else [host_platform()]
    chosen = [m for m in manifests if m.platform is not None and any(w.matches(m.platform) for w in wanted)]
    if not chosen:
        have = ", ".join(str(m.platform) for m in manifests if m.platform) or "none"
        want = ", ".join(str(w) for w in wanted)
        raise PlatformError(f"no manifest for platform {want} in the index (it has: {have})")
    return chosen


def _with_platform(entry: _Entry, platform_of: Callable[[_Entry], Platform | None]) -> _Entry:
    if entry.platform is not None:
        return entry
    plat = platform_of(entry)
    if plat is None or not (plat.os and plat.architecture):
        return entry
    return dataclasses.replace(entry, platform=plat)  # type: ignore[type-var]
