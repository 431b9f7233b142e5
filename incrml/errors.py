"""The one exception type a user's mistake raises; the CLI turns it into one line on stderr."""


class IncrmlError(Exception):
    """A problem the user can fix: bad input, a missing workspace, a broken params.yaml."""

    exit_code = 1


class BusyError(IncrmlError):
    """Another incrml command holds the workspace."""

    exit_code = 75  # EX_TEMPFAIL: try again later
