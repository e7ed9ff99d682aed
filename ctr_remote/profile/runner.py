"""`profile()`: unpack, mount, run, record, clean up.

Work directory layout (one fresh, root-only directory per run):
    l/N       layer N unpacked in overlay form (l/ a tmpfs when the image fits in memory)
    m/N       its recording FUSE mount
    s/        the FUSE daemon's logs, access logs       upper/, ovl/   overlay upper and work dirs
    rootfs/   the overlay the container runs on         etc/     generated hosts and resolv.conf
    bundle/   config.json and the runtime's log         runc/    the runtime's private state root
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from ctr_remote import leftovers  # the module: it imports this package's mounts in turn
from ctr_remote.cancel import CancelToken
from ctr_remote.layer.compression import Compression, detect
from ctr_remote.layer.paths import clean_name
from ctr_remote.profile import cdi, mounts
from ctr_remote.profile.errors import ProfileError
from ctr_remote.profile.recording import Recording, check_recorder, recording_for
from ctr_remote.profile.result import ProfileResult
from ctr_remote.profile.rootfs import check_executable, resolve_user
from ctr_remote.profile.runtime import Container, find_runtime, stop_signal_of
from ctr_remote.profile.spec import Command, build_spec, command_of, hosts_text, resolv_conf_text
from ctr_remote.profile.unpack import unpack_layer
from ctr_remote.profile.workload import NetworkMode, Workload
from ctr_remote.runstate import RecordedContainer, RecordedNetwork, RunRecord, recorded
from ctr_remote.signals import aborting, signals_deferred

log = structlog.get_logger()

# overlayfs' OVL_MAX_STACK. Checked first: each layer costs a FUSE mount and a daemon thread, and a
# manifest (up to 4 MiB) can list tens of thousands.
MAX_LAYERS = 500
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def check_requirements(workload: Workload) -> None:
    """What `profile` needs before it starts, checked up front (before layers are downloaded):
    the runtime binary, /dev/fuse or fanotify, the CDI devices, and with --cni the network configuration
    and its plugins."""
    find_runtime(workload.runtime)
    mounts.check_mount_binary()
    check_recorder(workload.recorder)
    if workload.devices:
        cdi.resolve(workload.devices, workload.cdi_spec_dirs)
    if workload.network is NetworkMode.CNI:
        from ctr_remote.profile.cni import check_config

        check_config(workload.cni)


def profile(
    layers: Sequence[Path],
    config: dict,
    workload: Workload,
    *,
    workdir: Path | None = None,
    cancel: CancelToken | None = None,
) -> ProfileResult:
    """Run `workload` on the image made of `layers` and record which files it accessed.

    `layers` are local layer blobs (tar, tar+gzip or tar+zstd), bottom layer first. `config` is the
    image config JSON (its "config" object supplies Env, Entrypoint, Cmd, WorkingDir, User,
    StopSignal). Temporary state lives in a fresh directory under `workdir` (default: the system temp
    dir) and is removed, with every mount and the container, before this returns or raises, also
    on SIGINT (re-raised as KeyboardInterrupt) and SIGTERM (raised as Terminated).
    Setting `cancel` (a batch's interrupt or --fail-fast, from another thread) kills the container at
    once and raises Cancelled, after the same cleanup: what a run cut short recorded is not what the
    workload reads in its period, so it is not returned.
    Raises ProfileError on anything that prevents the run; a workload that exits non-zero is not an
    error (its exit code is in the result).
    """
    if len(layers) > MAX_LAYERS:
        raise ProfileError(f"the image has {len(layers)} layers; overlayfs stacks at most {MAX_LAYERS}")
    for blob in layers:
        if not os.access(blob, os.R_OK) or not Path(blob).is_file():
            raise ProfileError(f"layer blob {blob} does not exist or is not a readable file")
    runtime = find_runtime(workload.runtime)
    mounts.check_mount_binary()
    check_recorder(workload.recorder)
    devices = cdi.resolve(workload.devices, workload.cdi_spec_dirs) if workload.devices else None
    command = command_of(config, workload)
    stop_signal = stop_signal_of(config)
    base = Path(workdir or tempfile.gettempdir()).absolute()
    if any(c in str(base) for c in ",:\\"):
        raise ProfileError(
            f"work directory {base} contains ',', ':' or '\\', which overlayfs options cannot hold"
        )
    stop = threading.Event()
    # The hook wakes the wait for the period; the run then sees the token and raises Cancelled.
    stopped_by = cancel.on_cancel(stop.set) if cancel is not None else contextlib.nullcontext()
    with _signal_handling(workload, stop), stopped_by, recorded() as record:
        try:
            work = record.make_temp_dir("ctr-remote-profile-", base)
        except OSError as e:
            raise ProfileError(f"cannot create a work directory in {base}: {e.strerror}") from None
        try:
            with contextlib.ExitStack() as stack:
                try:
                    recording, exit_code, excluded, seconds = _run(
                        work,
                        stack,
                        list(layers),
                        config,
                        workload,
                        runtime,
                        command,
                        devices,
                        stop,
                        stop_signal,
                        record,
                        cancel,
                    )
                finally:
                    with signals_deferred():
                        stack.close()  # container, recorder, overlay: the record is complete after this
                accessed = recording.accessed(excluded)
        except OSError as e:  # our own files and processes: e.g. the work directory's filesystem is full
            where = f" ({e.filename})" if e.filename else ""
            raise ProfileError(f"profiling failed in {work}: {e.strerror or e}{where}") from None
        finally:
            with signals_deferred():
                leftovers.remove_tree(work)
    # What the workload cost, apart from unpacking and mounting: compare it with a plain run.
    log.info(
        "workload recorded",
        recorder=workload.recorder.value,
        workload_seconds=round(seconds, 3),
        files_per_layer=[len(paths) for paths in accessed],
    )
    if exit_code:
        log.warning(
            "the workload exited with a non-zero status; its accesses are recorded", exit_code=exit_code
        )
    return ProfileResult(accessed=accessed, exit_code=exit_code)


def _run(
    work: Path,
    stack: contextlib.ExitStack,
    layers: list[Path],
    config: dict,
    workload: Workload,
    runtime: str,
    command: Command,
    devices: cdi.ContainerEdits | None,
    stop: threading.Event,
    stop_signal: signal.Signals,
    record: RunRecord,
    cancel: CancelToken | None,
) -> tuple[Recording, int | None, list[str], float]:
    os.chmod(work, 0o700)  # device nodes and setuid files of the image live below
    for name in ("l", "m", "s", "upper", "ovl", "rootfs", "etc", "bundle", "runc"):
        (work / name).mkdir()
    _unpack_in_memory_if_it_fits(work / "l", layers)
    recording = recording_for(workload.recorder, work, stack, stop)
    for i, blob in enumerate(layers):
        _check(cancel)  # a large image takes a while to unpack: no further layer once cancelled
        recording.add_layer(i, unpack_layer(blob, work / "l" / str(i), what=f"layer {i} ({blob.name})"))
    recording.ready()

    rootfs = work / "rootfs"
    if not layers:  # no layers at all: an empty lower dir
        (recording.lower_base / "empty").mkdir()
    lowers = [str(i) for i in reversed(range(len(layers)))] or ["empty"]
    try:
        # No index/metacopy/redirects: fewer xattr probes on the FUSE layers, none needed read-only.
        mounts.mount_overlay(
            rootfs,
            recording.lower_base,
            lowers,
            work / "upper",
            work / "ovl",
            "index=off,metacopy=off,redirect_dir=off",
        )
    except OSError as e:
        raise ProfileError(f"cannot mount the image's layers with overlayfs: {e.strerror}") from None
    stack.callback(_unmount, rootfs)

    user = resolve_user(rootfs, command.user)
    check_executable(rootfs, command.args[0], command.env, command.cwd)

    hosts, resolv_conf = work / "etc" / "hosts", work / "etc" / "resolv.conf"
    hosts.write_text(hosts_text(workload), encoding="utf-8")
    resolv_conf.write_text(resolv_conf_text(workload), encoding="utf-8")
    for f in (hosts, resolv_conf):
        f.chmod(0o644)
    container_id = f"ctr-remote-profile-{os.getpid()}-{secrets.token_hex(4)}"
    netns_path = None
    if workload.network is NetworkMode.CNI:
        from ctr_remote.profile.cni import DEFAULT_IFNAME, DEFAULT_NETNS_DIR, cni_network

        record.add_network(
            RecordedNetwork(
                str(DEFAULT_NETNS_DIR / container_id),
                container_id,
                DEFAULT_IFNAME,
                str(workload.cni.conf_dir.absolute()),
                str(workload.cni.plugin_dir.absolute()),
            )
        )
        netns_path = stack.enter_context(cni_network(workload.cni, container_id)).netns_path
    container = Container(runtime, work / "runc", container_id, work / "bundle")
    started_hook = container.started_hook()
    spec = build_spec(
        command,
        user,
        workload,
        rootfs=rootfs,
        hosts=hosts,
        resolv_conf=resolv_conf,
        hostname=container_id[:63],
        netns_path=netns_path,
        started_hook=started_hook,
    )
    if devices is not None:
        cdi.apply(spec, devices)
    bundle = container.bundle
    (bundle / "config.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    # From here on, what opens the image's files is the runtime's, its hooks' and the workload's: the
    # lookups above (the user, the binary) are not recorded by fanotify. Both recorders watch before
    # `runc run`, so OCI hooks are recorded too: a createContainer hook (NVIDIA's ldconfig, from CDI) runs
    # in the container's mount namespace before pivot_root and reads the image at the spec's root.path,
    # which is this overlay. What is read through the mounts (CDI's included) is excluded below.
    recording.start(stack)
    record.add_container(RecordedContainer(runtime, str(container.state_root), container_id))
    stack.callback(container.delete)
    _check(cancel)  # not even started: a container killed while runc creates it takes longer to remove
    started = time.monotonic()
    exit_code = container.run(workload, stop, stop_signal, cancel)
    seconds = time.monotonic() - started
    container.check_ran(started_hook, exit_code)
    recording.check()
    excluded = [clean_name(m["destination"]) for m in spec["mounts"]]
    return recording, exit_code, excluded, seconds


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.check("profiling")


# Assumed ratio of a compressed layer's tar to its blob, to guess whether the image fits in memory.
_COMPRESSION_RATIO = 5


def _unpack_in_memory_if_it_fits(target: Path, layers: list[Path]) -> None:
    """Unpack the layers on a tmpfs when the unpacked image fits comfortably in memory.

    Creating thousands of files on a busy disk costs ~0.3 ms each (measured here: 1.3 s for a
    3,000-file layer vs 30 ms on tmpfs), and the FUSE daemons serve from these files while the
    workload runs. Only the layers: their size is the image's, known up front. The workload's own
    writes (the overlay's upper dir) stay on the work directory's disk, so a workload writing
    gigabytes costs disk, not the host's memory. nosuid,nodev: nothing of the image is usable from
    the host side.
    """
    need = 0
    for blob in layers:
        with open(blob, "rb") as f:
            compressed = detect(f.read(4)) is not Compression.NONE
        need += blob.stat().st_size * (_COMPRESSION_RATIO if compressed else 1)
    available = _mem_available()
    if need > available // 4:
        log.info("unpacking on disk: the image may not fit in memory", estimated_bytes=need)
        return
    mounts.mount(
        "tmpfs", target, "tmpfs", f"mode=0700,size={available // 2}", mounts.MS_NOSUID | mounts.MS_NODEV
    )


def _mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _unmount(target: Path) -> None:
    try:
        mounts.umount(target)
    except OSError:
        mounts.umount(target, lazy=True)


@contextlib.contextmanager
def _signal_handling(workload: Workload, stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM abort the run (cleanly); with --wait-on-signal they end the period instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    if not workload.wait_on_signal:
        with aborting():
            yield
        return

    def end_period(signum: int, frame: object) -> None:
        log.info("signal received; stopping the workload", signal=signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, end_period) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
