"""The `incrml` command's entry point: for a command that reproduces stages, the stage worker's
zygotes start first, before the CLI's own imports, so their head start is as long as it can be;
and such a command ends without tearing down the interpreter."""

from __future__ import annotations

import os
import sys
from contextlib import suppress


def main() -> None:
    from incrml.pipeline import STAGES
    from incrml.worker import warm_worker

    reproducing = {"ingest-batch", *(stage.replace("_", "-") for stage in STAGES)}
    argv = sys.argv[1:]
    if not argv or argv[0] not in reproducing or {"--help", "-h"} & set(argv):
        from incrml.cli import main as cli

        cli()
        return
    with warm_worker() as env:
        os.environ.update(env)  # the worker reproduce_batch would start; DVC passes it to stages
        from incrml.cli import main as cli

        try:
            cli()
        except SystemExit as done:
            code = 0 if done.code is None else done.code
            if not isinstance(code, int):  # as the interpreter does: the message, then 1
                print(code, file=sys.stderr)
                code = 1
        else:
            code = 0
    _exit(code)


def _exit(code: int) -> None:
    """Exit as the interpreter would, less its teardown: DVC's imports leave a heap that takes
    ~0.1 s to free, a few % of a small batch's ingest. The exit handlers still run and the
    output is flushed; every file incrml writes and every DVC repo it opens is closed by then."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
