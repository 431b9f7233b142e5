"""The one exception type a user's mistake raises; the CLI turns it into one line on stderr."""


class IncrmlError(Exception):
    """A problem the user can fix: bad input, a missing workspace, a broken params.yaml."""

    exit_code = 1


class BusyError(IncrmlError):
    """Another incrml command holds the workspace."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class UnavailableError(IncrmlError):
    """The MLflow tracking server could not be reached."""

    exit_code = 69  # EX_UNAVAILABLE


class Interrupted(IncrmlError):
    """The command was stopped by Ctrl-C (SIGINT) or SIGTERM; the workspace was put back."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; the workspace is back at the batch it was on")
        self.exit_code = 128 + signum


class DriftRefused(IncrmlError):
    """The drift gate (drift.gate: refuse) refused the batch: it drifted from the merged history."""

    exit_code = 65  # EX_DATAERR: the stage's exit status too, which incrml maps back to this
