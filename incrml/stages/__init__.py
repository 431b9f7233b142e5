"""The six pipeline stages, one module each; dvc.yaml runs them as `python -m incrml.stages.NAME`.

Each module keeps its heavy imports inside its functions, so a stage handed to incrml's warm
worker (see incrml.worker) starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from incrml.errors import IncrmlError
from incrml.pipeline import STAGE_LOG_ENV
from incrml.workspace import Layout

if TYPE_CHECKING:
    from incrml.config import Params

    Body = Callable[[Layout, Params], object]


def stage_main(body: Body) -> None:
    """The entry point of `python -m incrml.stages.NAME`: run the stage, here or in the worker."""
    from incrml.worker import WORKER_ENV, delegate

    address = os.environ.get(WORKER_ENV)
    code = delegate(address, body) if address else None
    sys.exit(run_body(body) if code is None else code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM unwinds like Ctrl-C, so a stage stops cleanly: no half-written output, no RUNNING run."""


def _stop(signum, frame) -> None:
    """The first SIGINT or SIGTERM unwinds the stage; later ones (the terminal and incrml both
    pass the signal on) are ignored, so they cannot cut short the clean-up, like ending the run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated if signum == signal.SIGTERM else KeyboardInterrupt


STATS_ENV = "INCRML_STAGE_STATS"


def _rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _record(body: Body, started: float, rss_before: int) -> None:
    """With INCRML_STAGE_STATS set (the benchmark sets it), one JSON line per stage: its time,
    and its peak memory above what it started with (imports excluded)."""
    path = os.environ.get(STATS_ENV)
    if not path:
        return
    import json
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = {"stage": body.__name__, "seconds": round(time.perf_counter() - started, 4),
            "rss_start_kib": rss_before, "rss_peak_kib": peak, "rss_growth_kib": max(peak - rss_before, 0)}
    with open(path, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def run_body(body: Body) -> int:
    """Run a stage body in the workspace it was started in; its exit code.

    A user's mistake is one `Error:` line; anything else leaves its traceback in the output.
    """
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log = os.environ.get(STAGE_LOG_ENV)
    if log:  # driven by incrml: keep the terminal for its progress display
        with open(log, "a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
    from incrml.config import load_params

    root = Path.cwd()
    started, rss_before = time.perf_counter(), _rss_kib()
    try:
        body(Layout(root), load_params(root))
        _record(body, started, rss_before)
        return 0
    except IncrmlError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # the shell's convention: 128 + the signal's number
        signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        print(f"Error: stopped by {signum.name}", file=sys.stderr)
        return 128 + signum
    except BaseException:  # noqa: BLE001 - the traceback is the report, in the stage log
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
