"""Ingesting a batch: set batch_number, reproduce through DVC, and put things back on failure."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from incrml import pipeline
from incrml.config import PARAMS_FILE, Params, add_excluded_batch, load_params, write_batch_number
from incrml.errors import DriftRefused, IncrmlError, Interrupted
from incrml.files import read_json
from incrml.lock import workspace_lock
from incrml.pipeline import StageResult
from incrml.tracking import check_reachable
from incrml.worker import PR_SET_CHILD_SUBREAPER, prctl, warm_worker
from incrml.workspace import Layout

Progress = tuple[Callable[[str], None], Callable[[StageResult], None]]


def parse_batch(text: str) -> int:
    """A batch number as the user typed it: a whole number from 1 up."""
    try:
        batch = int(text.strip())
    except ValueError:
        raise IncrmlError(f"batch must be a whole number from 1 up, got '{text}'") from None
    if batch < 1:
        raise IncrmlError(f"batch must be a whole number from 1 up, got '{text}'")
    return batch


def stream_rows(layout: Layout, params: Params) -> int:
    """Rows in the stream: from get_data's schema if it matches params, else counted from the source."""
    from incrml.stages.get_data import source_fingerprint

    if layout.schema.exists():
        schema = read_json(layout.schema)
        if schema.get("made_from") == source_fingerprint(params.data):
            return schema["rows"]
    from incrml.stages.get_data import count_stream_rows

    return count_stream_rows(params.data, layout.root)


def check_available(layout: Layout, params: Params, batch: int) -> None:
    from incrml.config import FilesSource
    from incrml.stages.prepare_batch import check_batch

    if isinstance(params.data.source, FilesSource):  # batch N is the Nth accepted file
        from incrml.batch_files import check_accepted

        return check_accepted(layout, batch)
    check_batch(batch, stream_rows(layout, params), params.data.batch_size)


def reproduce_batch(
    root: Path,
    batch: int,
    target: str | None = None,
    progress: Progress | None = None,
    wait: float = 5.0,
    command: str = "ingest-batch",
    warn: Callable[[str], None] | None = None,
) -> list[StageResult]:
    """Set batch_number to `batch` and reproduce (the whole graph, or one stage like `dvc repro -s`).

    The workspace is locked for the whole command. A batch beyond the stream, or an unreachable
    tracking server, is refused before anything changes. If reproduction fails or is stopped by
    SIGINT or SIGTERM, the old params.yaml is put back and the pipeline reproduced for it again
    (from DVC's cache), so params.yaml and dvc.lock agree and the next ingest starts clean.
    A batch the drift gate refuses is not a failure: it is added to data.exclude and the
    pipeline reproduced again, and `warn` (by default a `Warning:` line on stderr) says so.
    """
    with workspace_lock(root, command, wait):
        layout = Layout(root)
        params = load_params(root)
        repair(layout, params)
        check_available(layout, params, batch)
        check_reachable(params, root)
        pipeline.start_log(root)
        params_path = root / PARAMS_FILE
        # Put back by a rename, which needs no free space: a full disk cannot strand the new batch.
        shutil.copyfile(params_path, layout.params_backup)
        on_start, on_done = progress or (lambda stage: None, lambda result: None)
        single = target is not None
        with warm_worker() as env, StopSignals() as stop:
            write_batch_number(root, batch)
            try:
                # A whole reproduction is kept, and restored when its inputs are seen again.
                key = pipeline.snapshot_key(root) if target is None else None
                restored = pipeline.restore_snapshot(root, key, on_start, on_done) if key else None
                if restored is not None:
                    return restored
                results = _reproduce_gated(
                    root, batch, target, (on_start, on_done), env, stop, warn or _warn_on_stderr
                )
                if key:
                    pipeline.save_snapshot(root)  # its own key: a refused batch changed params.yaml
                return results
            except (IncrmlError, OSError) as exc:  # OSError: a full disk or read-only workspace, here
                stop.settle()
                if params_path.read_bytes() != layout.params_backup.read_bytes():
                    os.replace(layout.params_backup, params_path)
                    stop.reset()
                    try:
                        pipeline.reproduce(root, target, single, env=env, stop=stop.check)
                    except (IncrmlError, OSError):
                        pass  # the original error is the one to report; `incrml status` shows what is stale
                if stop.signum and not isinstance(exc, Interrupted):
                    raise Interrupted(stop.signum) from None
                raise
            finally:
                layout.params_backup.unlink(missing_ok=True)


def _warn_on_stderr(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def _reproduce_gated(
    root: Path,
    batch: int,
    target: str | None,
    progress: Progress,
    env: dict[str, str],
    stop: StopSignals,
    warn: Callable[[str], None],
) -> list[StageResult]:
    """Reproduce; if the drift gate refuses the batch, add it to data.exclude and reproduce again,
    so the workspace ends at `batch` with the batch kept out of the history, as `dvc repro` with
    those params would leave it. A refused or drifted batch is reported through `warn`."""
    from incrml import drift

    on_start, on_done = progress
    results: list[StageResult] = []

    def done(result: StageResult) -> None:
        results.append(result)
        on_done(result)

    layout, single = Layout(root), target is not None
    try:
        pipeline.reproduce(root, target, single, on_start=on_start, on_done=done, env=env, stop=stop.check)
    except DriftRefused as refused:
        stop.check()
        add_excluded_batch(root, batch)
        shown = {r.stage for r in results}  # the second pass reports only what it changes

        def start_again(stage: str) -> None:
            if stage not in shown:
                on_start(stage)

        def done_again(result: StageResult) -> None:
            if result.stage not in shown or result.outcome != "unchanged":
                done(result)

        pipeline.reproduce(root, target, single, on_start=start_again, on_done=done_again, env=env, stop=stop.check)
        report = _drift_report(layout, batch)
        said = drift.summary(report) if report else str(refused)
        warn(f"batch {batch} refused: {said}; it is kept out of the history by data.exclude in params.yaml")
        return results
    report = _drift_report(layout, batch)
    merged = any(r.stage == "merge_data" and r.outcome != "unchanged" for r in results)
    if merged and report and report["decision"] == "warn":
        warn(f"batch {batch} drifted: {drift.summary(report)}; taken into the history (drift.gate: warn)")
    return results


def _drift_report(layout: Layout, batch: int) -> dict | None:
    """metrics/drift.json if it is there and describes `batch`."""
    if not layout.drift.exists():
        return None
    report = read_json(layout.drift)
    return report if isinstance(report, dict) and report.get("batch") == batch else None


class StopSignals:
    """While DVC runs stages, SIGINT and SIGTERM stop the running stage and no new one starts.

    DVC ignores SIGINT in its own process while a stage runs (the terminal sends it to the
    stage too); SIGTERM reaches only this process, so it is passed on to every process below
    this one. The stage then fails, DVC reports it, and reproduce_batch puts things back.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._interrupts = 0

    def __enter__(self) -> "StopSignals":
        self._saved = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        _subreaper(True)
        return self

    def __exit__(self, *exc: object) -> None:
        _subreaper(False)  # the flag outlives the block otherwise (a test process calling this)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        self._interrupts += 1
        import psutil

        for child in psutil.Process().children(recursive=True):
            with suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)

    def check(self) -> None:
        """Raise before a stage starts if a stop was asked for."""
        if self._interrupts:
            raise Interrupted(self.signum)

    def settle(self, timeout: float = 30) -> None:
        """Wait for the processes of a stopped stage to finish their clean-up (ending the MLflow
        run, removing temporary files) before anything is put back; kill what outlives `timeout`.

        A stage command whose shell died of Ctrl-C is orphaned, not gone: as this process's
        subreaper it is still found here."""
        import psutil

        from incrml.worker import zygotes

        with suppress(psutil.Error):
            mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in zygotes()]
            _, alive = psutil.wait_procs(mine, timeout=timeout)
            for process in alive:
                with suppress(psutil.Error):
                    process.kill()

    def reset(self) -> None:
        """Let the put-back run; a second signal during it stops that too."""
        self._interrupts = 0


def _subreaper(on: bool) -> None:
    """While on, orphaned descendants (a stage whose shell died of a signal) become this
    process's children, so settle() finds them (Linux; elsewhere nothing changes)."""
    prctl(PR_SET_CHILD_SUBREAPER, int(on))


def repair(layout: Layout, params: Params) -> None:
    """Put right what a killed command left: temporary files, and an MLflow run left RUNNING."""
    leftovers = [*layout.root.glob(".*.tmp-*")]
    for folder in ("data", "models", "metrics"):
        leftovers += (layout.root / folder).rglob(".*.tmp-*")
    for leftover in leftovers:
        owner = leftover.name.rsplit("-", 1)[-1]
        if owner.isdigit() and not _alive(int(owner)):
            leftover.unlink(missing_ok=True)
    if layout.run_marker.exists():
        marker = read_json(layout.run_marker)
        if not _alive(marker["pid"]):
            from incrml.tracking import end_abandoned_run

            end_abandoned_run(params, layout.root, marker["run_id"])
            layout.run_marker.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
