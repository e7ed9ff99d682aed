"""The two ways a run is recorded, behind one interface the runner drives in order:

    add_layer() per unpacked layer -> ready() -> [overlay mounted on lower_base] -> start()
    -> [the container runs] -> check() -> [teardown: close() before the overlay is unmounted]
    -> accessed()

FUSE: a recording passthrough mount under each layer (the overlay's lowers are the FUSE mounts);
fanotify: the overlay's lowers are the unpacked layer directories, the overlay itself is watched.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ctr_remote.profile.attribute import attribute_merged, attribute_per_layer
from ctr_remote.profile.fanotify import FanotifyRecorder, check_fanotify
from ctr_remote.profile.recorder import READY_TIMEOUT, RecorderDaemon, RecordingMount, check_fuse
from ctr_remote.profile.unpack import UnpackedLayer
from ctr_remote.profile.workload import RecorderKind


def check_recorder(kind: RecorderKind) -> None:
    """One-line error up front when this machine cannot record this way."""
    if kind is RecorderKind.FUSE:
        check_fuse()
    else:
        check_fanotify()


class FuseRecording:
    def __init__(self, work: Path, stack: contextlib.ExitStack, stop: threading.Event) -> None:
        # Started first: the daemon's start-up overlaps with unpacking, and each layer is mounted as
        # soon as it is unpacked.
        self.lower_base = work / "m"
        self.daemon = RecorderDaemon(work / "s")
        stack.callback(self.daemon.stop)
        self.mounts: list[RecordingMount] = []
        self.stop = stop

    def add_layer(self, index: int, layer: UnpackedLayer) -> None:
        self.mounts.append(self.daemon.serve(index, layer, self.lower_base / str(index)))

    def ready(self) -> None:
        self.daemon.wait_ready(time.monotonic() + READY_TIMEOUT)
        self.daemon.watch(
            self.stop.set
        )  # a dead recorder ends the run at once: nothing more would be recorded

    def start(self, stack: contextlib.ExitStack) -> None:
        pass  # recording since the mounts were made

    def check(self) -> None:
        self.daemon.check()

    def accessed(self, excluded: Sequence[str]) -> list[list[str]]:
        return attribute_per_layer([m.accessed() for m in self.mounts], excluded)


class FanotifyRecording:
    def __init__(self, work: Path, stack: contextlib.ExitStack, stop: threading.Event) -> None:
        self.lower_base = work / "l"
        self.layers: list[UnpackedLayer] = []
        self.recorder = FanotifyRecorder(work / "rootfs", work / "s")
        stack.callback(self.recorder.close)  # in case start() is never reached
        self.recorder.launch(stop.set)  # a dead reader ends the run at once

    def add_layer(self, index: int, layer: UnpackedLayer) -> None:
        self.layers.append(layer)

    def ready(self) -> None:
        pass

    def start(self, stack: contextlib.ExitStack) -> None:
        stack.callback(self.recorder.close)  # after the container is gone, before the unmount
        self.recorder.start()

    def check(self) -> None:
        self.recorder.check()

    def accessed(self, excluded: Sequence[str]) -> list[list[str]]:
        return attribute_merged(self.recorder.paths(), self.layers, excluded)


Recording = FuseRecording | FanotifyRecording


def recording_for(
    kind: RecorderKind, work: Path, stack: contextlib.ExitStack, stop: threading.Event
) -> Recording:
    """The recording for `kind`; `stop` is set if its recorder dies during the run."""
    return (FuseRecording if kind is RecorderKind.FUSE else FanotifyRecording)(work, stack, stop)
