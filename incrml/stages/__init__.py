"""The six pipeline stages, one module each; dvc.yaml runs them as `python -m incrml.stages.NAME`.

Each module keeps its heavy imports inside its functions, so a stage handed to incrml's warm
worker (see incrml.worker) starts in milliseconds.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from incrml.config import Params, load_params
from incrml.errors import IncrmlError
from incrml.pipeline import STAGE_LOG_ENV
from incrml.workspace import Layout

Body = Callable[[Layout, Params], object]


def stage_main(body: Body) -> None:
    """The entry point of `python -m incrml.stages.NAME`: run the stage, here or in the worker."""
    from incrml.worker import WORKER_ENV, delegate

    address = os.environ.get(WORKER_ENV)
    code = delegate(address, body) if address else None
    sys.exit(run_body(body) if code is None else code)


def run_body(body: Body) -> int:
    """Run a stage body in the workspace it was started in; its exit code.

    A user's mistake is one `Error:` line; anything else leaves its traceback in the output.
    """
    log = os.environ.get(STAGE_LOG_ENV)
    if log:  # driven by incrml: keep the terminal for its progress display
        with open(log, "a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
    root = Path.cwd()
    try:
        body(Layout(root), load_params(root))
        return 0
    except IncrmlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except BaseException:  # noqa: BLE001 - the traceback is the report, in the stage log
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
