"""Ingesting a batch: set batch_number, reproduce through DVC, and put things back on failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from incrml import pipeline
from incrml.config import PARAMS_FILE, Params, load_params, write_batch_number
from incrml.errors import IncrmlError
from incrml.files import atomic_write_text, read_json
from incrml.pipeline import StageResult
from incrml.worker import warm_worker
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
    from incrml.stages.prepare_batch import check_batch

    check_batch(batch, stream_rows(layout, params), params.data.batch_size)


def reproduce_batch(
    root: Path,
    batch: int,
    target: str | None = None,
    progress: Progress | None = None,
) -> list[StageResult]:
    """Set batch_number to `batch` and reproduce (the whole graph, or one stage like `dvc repro -s`).

    A batch beyond the stream is refused before anything changes. If reproduction fails, the
    old params.yaml is put back and the pipeline reproduced for it again (from DVC's cache), so
    params.yaml and dvc.lock agree and the next ingest starts clean.
    """
    layout = Layout(root)
    params = load_params(root)
    check_available(layout, params, batch)
    params_path = root / PARAMS_FILE
    before = params_path.read_text()
    on_start, on_done = progress or (lambda stage: None, lambda result: None)
    single = target is not None
    with warm_worker() as env:
        write_batch_number(root, batch)
        try:
            return pipeline.reproduce(root, target, single, on_start=on_start, on_done=on_done, env=env)
        except (IncrmlError, KeyboardInterrupt):
            if params_path.read_text() != before:
                atomic_write_text(params_path, before)
                try:
                    pipeline.reproduce(root, target, single, env=env)
                except (IncrmlError, KeyboardInterrupt):
                    pass  # the original error is the one to report; `incrml status` shows what is stale
            raise
