"""Opening a store by reference: the one module that knows both backends."""

from __future__ import annotations

from ctr_remote.image.layout import LayoutStore
from ctr_remote.image.reference import Reference
from ctr_remote.image.registry import RegistryOptions, RegistryStore
from ctr_remote.image.store import ImageStore


def open_store(ref: Reference, registry: RegistryOptions | None = None) -> ImageStore:
    """A LayoutStore for `local://` references (they take no options), a RegistryStore otherwise."""
    if ref.is_layout:
        return LayoutStore(ref)
    return RegistryStore(ref, registry or RegistryOptions())
