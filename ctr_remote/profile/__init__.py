"""The profiling runner: run the image's workload with runc on the image's layers stacked with
overlayfs, record which files it opens (per-layer recording FUSE mounts under the overlay, or a
fanotify mark on it), and report them per layer, in first-open order.

    result = profile([layer0_blob, layer1_blob], image_config, Workload(period=5))
    for line in record_lines(result, manifest_digest): ...

Modules: `runner` (profile(): the sequence and the cleanup), `unpack` (layer blobs into overlay-form
directories, hostile entries refused), `recording` (the two recorders behind one interface),
`fuse_daemon` / `recorder` (the per-layer recording FUSE passthrough and its parent side), `fanotify`
(the fanotify recorder), `attribute` (recorded paths to layers), `mounts` (mount/umount), `rootfs`
(users and the binary, resolved inside the image), `spec` (the OCI runtime spec, hosts, resolv.conf),
`runtime` (runc run and the stop conditions), `cni` / `netns` (--cni), `cdi` (--device, --gpus),
`result` (ProfileResult, --record-out lines).
"""

from __future__ import annotations

from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.result import ProfileResult
from ctr_remote.profile.runner import check_requirements, profile
from ctr_remote.profile.workload import CniConfig, DnsConfig, Mount, NetworkMode, Workload

__all__ = [
    "CniConfig",
    "DnsConfig",
    "Mount",
    "NetworkMode",
    "ProfileError",
    "ProfileResult",
    "Workload",
    "check_requirements",
    "profile",
]
