"""The `incrml` command's entry point: for a command that reproduces stages, the stage worker's
zygotes start first, before the CLI's own imports, so their head start is as long as it can be."""

from __future__ import annotations

import os
import sys


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

        cli()
