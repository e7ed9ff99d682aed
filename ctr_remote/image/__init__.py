"""Images wherever they live: references, media types, descriptors/manifests/indexes/configs,
platforms, and one store interface over registries (OCI distribution) and OCI layout directories.

    ref = parse_reference("http://127.0.0.1:5000/app:v1", plain_http=True)
    with open_store(ref) as store:
        top = store.resolve()
        index = parse_index(store.read_manifest(top))
"""

from ctr_remote.image import mediatypes as media_types
from ctr_remote.image.digest import digest_bytes
from ctr_remote.image.errors import (
    AuthError,
    DigestMismatchError,
    ImageError,
    InvalidReferenceError,
    LayoutError,
    NotFoundError,
    PlatformError,
    RegistryError,
    RetriesExhaustedError,
    UnsupportedMediaTypeError,
)
from ctr_remote.image.manifest import (
    ANNOTATION_REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    parse_config,
    parse_index,
    parse_manifest,
)
from ctr_remote.image.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)
from ctr_remote.image.open import open_store
from ctr_remote.image.platform import (
    Platform,
    host_platform,
    parse_platform,
    select_manifests,
)
from ctr_remote.image.reference import Kind, Reference, parse_reference
from ctr_remote.image.registry import RegistryOptions
from ctr_remote.image.store import ImageStore
from ctr_remote.image.transfer import (
    ImageBlobs,
    config_platform,
    copy_image,
    fetch_blobs,
    push_blobs,
    read_image,
    write_image,
)

__all__ = [
    "ANNOTATION_REF_NAME",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "AuthError",
    "Descriptor",
    "DigestMismatchError",
    "ImageBlobs",
    "ImageConfig",
    "ImageError",
    "ImageStore",
    "Index",
    "InvalidReferenceError",
    "Kind",
    "LayoutError",
    "Manifest",
    "NotFoundError",
    "Platform",
    "PlatformError",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "RetriesExhaustedError",
    "UnsupportedMediaTypeError",
    "config_platform",
    "copy_image",
    "digest_bytes",
    "fetch_blobs",
    "host_platform",
    "media_types",
    "open_store",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "parse_platform",
    "parse_reference",
    "push_blobs",
    "read_image",
    "select_manifests",
    "write_image",
]
