"""The six pipeline stages, one module each; dvc.yaml runs them as `python -m incrml.stages.NAME`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from incrml.config import Params, load_params
from incrml.errors import IncrmlError
from incrml.pipeline import STAGE_LOG_ENV
from incrml.workspace import Layout


def stage_main(body: Callable[[Layout, Params], None]) -> None:
    """Run a stage body in the workspace DVC started it in; a user's mistake is one line."""
    root = Path.cwd()
    log = os.environ.get(STAGE_LOG_ENV)
    if log:  # driven by incrml: keep the terminal for its progress display
        with open(log, "a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
    try:
        body(Layout(root), load_params(root))
    except IncrmlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
