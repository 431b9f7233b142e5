"""The one place that talks to DVC: reproduce stages with progress, status, dvc.lock's hashes, `dvc add`."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from contextlib import chdir, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from incrml.errors import BusyError, DriftRefused, IncrmlError, Interrupted

STAGES = ("get_data", "prepare_batch", "merge_data", "preprocess", "train", "evaluate")


@dataclass(frozen=True)
class StageResult:
    stage: str
    outcome: str  # "ran", "restored" (from DVC's run-cache) or "unchanged"
    seconds: float


@contextmanager
def _open(root: Path):
    """The DVC repo at `root`, with the cwd there too: DVC resolves some paths against the cwd."""
    from dvc.repo import Repo

    with chdir(root), Repo(os.fspath(root)) as repo:
        yield repo


STAGE_LOG_ENV = "INCRML_STAGE_LOG"


def reproduce(
    root: Path,
    target: str | None = None,
    single_item: bool = False,
    on_start: Callable[[str], None] = lambda stage: None,
    on_done: Callable[[StageResult], None] = lambda result: None,
    env: dict[str, str] | None = None,
    stop: Callable[[], None] = lambda: None,
) -> list[StageResult]:
    """`dvc repro [-s] [target]` through DVC's API, reporting each stage as it starts and ends.

    DVC's own chatter is kept off the terminal, and the stages write theirs to a log under
    .dvc/tmp, so a failed stage is reported as one line: the last line it wrote.
    """
    import time

    from dvc.exceptions import DvcException
    from dvc.repo.reproduce import _reproduce_stage

    results: list[StageResult] = []
    log = stage_log(root)
    log.parent.mkdir(parents=True, exist_ok=True)
    mark = log.stat().st_size if log.exists() else 0
    current: list[str] = []

    def repro_fn(stage, **kwargs):
        stop()  # a stop asked for between stages starts no new one
        if stage.is_data_source:  # a batch file `dvc add` tracks: DVC checks it, nothing runs
            current.clear()
            return _reproduce_stage(stage, **kwargs)
        name = stage.addressing
        current[:] = [name]
        on_start(name)
        started = time.perf_counter()
        ret = _reproduce_stage(stage, **kwargs)
        outcome = "unchanged" if ret is None else "restored" if name in quiet.restored else "ran"
        result = StageResult(name, outcome, time.perf_counter() - started)
        results.append(result)
        on_done(result)
        return ret

    with _QuietDvc(log) as quiet:
        try:
            with _open(root) as repo:
                repo.reproduce(target, single_item=single_item, repro_fn=repro_fn, run_env={**_stage_env(log), **(env or {})})
        except DvcException as exc:
            stop()
            _raise_if_locked(exc)
            status = _stage_exit_status(exc)
            signum = _stopped_by(status)
            if signum:
                raise Interrupted(signum) from None
            said = _last_line(log, mark)
            if current and status == DriftRefused.exit_code:  # the drift gate refused the batch
                raise DriftRefused(said.removeprefix("Error: ")) from None
            if current and said:
                raise IncrmlError(f"stage {current[0]} failed: {said.removeprefix('Error: ')}") from None
            raise IncrmlError(_dvc_message(exc)) from None
    return results


def _stage_env(log: Path) -> dict[str, str]:
    """Stages run with this interpreter's `python` first on PATH, as `uv run dvc repro` would."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {STAGE_LOG_ENV: str(log), "PATH": path}


def init_repo(root: Path, in_git: bool, subdir: bool) -> None:
    """`dvc init` (with --no-scm outside git, --subdir inside a larger repository), quietly."""
    from dvc.repo import Repo

    with _QuietDvc(), chdir(root):
        repo = Repo.init(os.fspath(root), no_scm=not in_git, subdir=subdir)
        with repo.config.edit() as config:
            config["core"]["analytics"] = False
        repo.close()


def track(root: Path, path: Path) -> None:
    """`dvc add PATH`, quietly: the file becomes a versioned input, its content in DVC's cache."""
    from dvc.exceptions import DvcException

    try:
        with _QuietDvc(), _open(root) as repo:
            repo.add(os.fspath(path.relative_to(root)))
    except DvcException as exc:
        _raise_if_locked(exc)
        raise IncrmlError(_dvc_message(exc)) from None


def stage_log(root: Path) -> Path:
    """Where the stages' output and DVC's warnings go: one log per command, which start_log
    begins, so a put-back after a failure adds to it instead of erasing what failed."""
    return root / ".dvc/tmp/incrml-stages.log"


def start_log(root: Path) -> None:
    log = stage_log(root)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")


def _last_line(log: Path, start: int = 0) -> str:
    """The last line written to `log` after byte `start`."""
    with open(log, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class _QuietDvc(logging.Handler):
    """While DVC runs, nothing of its own reaches the terminal: its warnings and errors go to
    `log` (the stage log) if given, the rest is dropped; the stages it checks out from its
    run-cache instead of running are noted. incrml reports what went wrong as one line."""

    _LOGGERS = ("dvc", "dvc_objects", "dvc_data")
    _PROGRESS = ("dvc.progress", "dvc_data.callbacks")

    def __init__(self, log: Path | None = None) -> None:
        super().__init__(logging.INFO)
        self.log = log
        self.restored: set[str] = set()
        self._saved: dict[str, list[logging.Handler]] = {}
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Stage '%s' is cached") and record.args:
            self.restored.add(str(record.args[0]))
        if record.levelno >= logging.WARNING and self.log is not None:
            with suppress(OSError), open(self.log, "a") as handle:
                handle.write(f"dvc {record.levelname.lower()}: {record.getMessage()}\n")

    def __enter__(self) -> "_QuietDvc":
        for name in self._LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = list(logger.handlers)
            logger.handlers[:] = [self]
        # DVC's progress bars switch themselves off when their logger is quieter than ERROR.
        for name in self._PROGRESS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, handlers in self._saved.items():
            logging.getLogger(name).handlers[:] = handlers
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def _stage_exit_status(exc: BaseException | None) -> int | None:
    """The exit status of the stage command that failed, from DVC's chained error."""
    import re

    while exc is not None:
        match = re.search(r"exited with (-?\d+)", str(exc))
        if match:
            return int(match.group(1))
        exc = exc.__cause__
    return None


def _stopped_by(status: int | None) -> int | None:
    """SIGINT or SIGTERM if a stage's exit status says it was stopped by one: 128 + the signal's
    number from a stage that caught it, or minus it from a shell that died of it (dash, the usual
    /bin/sh, does not hand its last command the process; when $SHELL is unset DVC runs /bin/sh)."""
    if status is None:
        return None
    signum = -status if status < 0 else status - 128
    return signum if signum in (signal.SIGINT, signal.SIGTERM) else None


def _raise_if_locked(exc: Exception) -> None:
    from dvc.lock import LockError

    if isinstance(exc, LockError):
        raise BusyError(f"workspace busy: DVC's lock is held by another process ({exc})") from None


def _dvc_message(exc: BaseException) -> str:
    """DVC chains the cause of a failed stage; the user wants the first line of each link."""
    parts = []
    while exc is not None:
        text = str(exc).strip().splitlines()
        if text and text[0] not in parts:
            parts.append(text[0])
        exc = exc.__cause__
    return ": ".join(parts) or "DVC failed"


def stale_stages(root: Path) -> dict[str, list[str]]:
    """`dvc status`: each stage that is not up to date, with what changed."""
    from dvc.exceptions import DvcException

    try:
        with _QuietDvc(), _open(root) as repo:
            status = repo.status()
    except DvcException as exc:
        _raise_if_locked(exc)
        raise IncrmlError(_dvc_message(exc)) from None
    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        reasons = []
        for change in changes:
            if isinstance(change, dict):
                for kind, items in change.items():
                    if isinstance(items, dict):
                        reasons += [f"{kind}: {path} {state}" for path, state in items.items()]
                    else:
                        reasons.append(f"{kind}: {items}")
            else:
                reasons.append(str(change))
        stale[stage.split(":")[-1]] = reasons
    return stale


def lock_hashes(root: Path, stage: str) -> dict[str, str]:
    """The md5 of each dep and out of `stage` as dvc.lock records them, by path."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    entry = _yaml_load(lock).get("stages", {}).get(stage, {})
    return {item["path"]: item.get("md5", "") for item in [*entry.get("deps", []), *entry.get("outs", [])]}


def cached(root: Path, md5s: list[str]) -> set[str]:
    """Those of `md5s` whose object DVC's local cache holds (a file, or a folder's .dir listing)."""
    from dvc.repo import Repo

    with _QuietDvc(), Repo(os.fspath(root)) as repo:
        return {md5 for md5 in md5s if repo.cache.local.exists(md5)}


# A whole reproduction, kept: dvc.lock as it stood after one, under the hash of everything it
# depends on that no stage writes. The same inputs again are restored the way a git-versioned
# DVC project restores a commit: that dvc.lock, then `dvc checkout` from DVC's cache.
SNAPSHOTS = ".dvc/tmp/incrml-locks"


def _yaml_load(path: Path):
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text()) or {}


def _external_deps(root: Path) -> list[str]:
    """The deps in dvc.yaml that no stage writes: code files, sources, accepted batch files."""
    stages = _yaml_load(root / "dvc.yaml").get("stages", {})
    deps, outs = set(), set()
    for stage in stages.values():
        deps.update(stage.get("deps", []))
        for kind in ("outs", "metrics", "plots"):
            outs.update(next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, []))
    return sorted(d for d in deps if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in outs))


def snapshot_key(root: Path) -> str:
    """The hash of params.yaml, dvc.yaml and the bytes of every file under each external dep."""
    import hashlib

    digest = hashlib.md5()
    for name in ("params.yaml", "dvc.yaml"):
        digest.update((root / name).read_bytes())
    files = []
    for dep in _external_deps(root):
        path = root / dep
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file, md5 in _file_md5s(root, [f for f in files if f.exists()]):
        digest.update(os.fsencode(file.relative_to(root)))
        digest.update(bytes.fromhex(md5))
    return digest.hexdigest()


MD5_MEMO = ".dvc/tmp/incrml-md5s.json"


def _file_md5s(root: Path, files: list[Path]) -> list[tuple[Path, str]]:
    """Each file with the md5 of its bytes. A file whose size, mtime and inode are those it had
    when last hashed is not read again (as DVC's own state does): a files stream's history costs
    a stat per file per ingest, not a read of every byte of it."""
    import json

    from incrml.files import atomic_write_text, file_md5

    memo_path = root / MD5_MEMO
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    known, result = {}, []
    for file in files:
        stat = file.stat()
        name, stamp = str(file.relative_to(root)), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = memo.get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] == stamp:
            md5 = entry[1]
        else:
            md5 = file_md5(file)
        known[name] = [stamp, md5]
        result.append((file, md5))
    if known != memo:
        with suppress(OSError):  # only a cache: a read-only workspace hashes again next time
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo_path, json.dumps(known))
    return result


def save_snapshot(root: Path) -> None:
    """Keep dvc.lock after a whole reproduction, under the key of its inputs."""
    from incrml.files import atomic_write_text

    atomic_write_text(root / SNAPSHOTS / f"{snapshot_key(root)}.lock", (root / "dvc.lock").read_text())


def restore_snapshot(
    root: Path,
    key: str,
    on_start: Callable[[str], None] = lambda stage: None,
    on_done: Callable[[StageResult], None] = lambda result: None,
) -> list[StageResult] | None:
    """Restore the reproduction kept under `key` (snapshot_key): its dvc.lock, and `dvc checkout`
    of every output from DVC's cache. None (and dvc.lock as it was) when there is none, or
    DVC's cache no longer holds it; then reproduce."""
    import time

    from dvc.exceptions import DvcException

    from incrml.files import atomic_write_text

    kept = root / SNAPSHOTS / f"{key}.lock"
    if not kept.exists():
        return None
    lock = root / "dvc.lock"
    before = lock.read_text() if lock.exists() else None
    old, new = (_yaml_load(lock).get("stages", {}) if before else {}), _yaml_load(kept).get("stages", {})
    started = time.perf_counter()
    atomic_write_text(lock, kept.read_text())
    try:
        with _QuietDvc(), _open(root) as repo:
            repo.checkout(force=True)
    except DvcException:
        if before is not None:
            atomic_write_text(lock, before)
        return None
    share = (time.perf_counter() - started) / len(new)
    results = []
    for stage in new:
        on_start(stage)
        results.append(StageResult(stage, "unchanged" if old.get(stage) == new[stage] else "restored", share))
        on_done(results[-1])
    return results
