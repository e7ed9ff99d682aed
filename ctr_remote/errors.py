"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class CtrRemoteError(Exception):
    """An error whose message is fit for the user as it is: one line, naming what went wrong."""

    exit_code: int = 1


class Interrupted(CtrRemoteError):
    """Ctrl-C (SIGINT): the shell's convention, 128 + 2."""

    exit_code = 130


class Terminated(CtrRemoteError):
    """SIGTERM arrived: raised where the program was, so every cleanup on the way out still runs."""

    exit_code = 143


class Cancelled(CtrRemoteError):
    """Work stopped because its CancelToken was set: the run was interrupted or another job failed
    (that job's error, or the interrupt, is what the user sees)."""


class UsageError(CtrRemoteError):
    """Flags or arguments that cannot work together or are malformed: exit 2, as click's own."""

    exit_code = 2
