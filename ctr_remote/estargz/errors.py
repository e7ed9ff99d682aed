"""The error every eStargz operation raises for bad input or a broken blob."""

from ctr_remote.errors import CtrRemoteError


class EstargzError(CtrRemoteError):
    """A layer could not be converted to eStargz, or a blob is not valid eStargz.

    The message is one line naming the problem (and the entry, where there is one).
    """


class UnrepresentableLayerError(EstargzError):
    """A readable layer that eStargz cannot represent, or whose eStargz blob Go's reader (the
    snapshotter's) would refuse: non-UTF-8 names, hardlinks to missing entries or in a cycle, names
    over PATH_MAX, numeric fields Go's archive/tar rejects. The layer itself can still be used as it
    is (optimize copies it unconverted unless told not to)."""
