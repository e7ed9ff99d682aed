"""The error every eStargz operation raises for bad input or a broken blob."""

from ctr_remote.errors import CtrRemoteError


class EstargzError(CtrRemoteError):
    """A layer could not be converted to eStargz, or a blob is not valid eStargz.

    The message is one line naming the problem (and the entry, where there is one).
    """
