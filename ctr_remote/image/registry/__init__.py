"""Images in a registry: `RegistryStore` (the distribution API's verbs) over `RegistryClient`
(httpx with authentication, retries and abort), configured by `RegistryOptions`."""

from ctr_remote.image.registry.client import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, RegistryClient
from ctr_remote.image.registry.options import RegistryOptions
from ctr_remote.image.registry.store import RegistryStore

__all__ = ["MAX_CONFIG_SIZE", "MAX_MANIFEST_SIZE", "RegistryClient", "RegistryOptions", "RegistryStore"]
