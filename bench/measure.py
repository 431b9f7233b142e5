"""Running incrml and the seed baseline as timed subprocesses, and measuring what they leave behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BASELINE = BENCH / "seed_baseline"
VENV_BIN = Path(sys.executable).parent
INCRML = VENV_BIN / "incrml"
# No single step of the benchmark takes anywhere near this; it only stops a hang.
STEP_TIMEOUT = 900.0
DATA_STAGES = ("prepare_batch", "merge_data", "preprocess")


class StepFailed(Exception):
    """A subprocess the benchmark needed exited non-zero or timed out; the message ends with its output."""

    @property
    def summary(self) -> str:
        """One line: what failed and the last thing it said."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        return lines[0] if len(lines) < 2 else f"{lines[0]}: {lines[-1]}"


@dataclass
class Run:
    cmd: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes: the peak resident set of the largest process in the tree


def bench_env() -> dict[str, str]:
    """The environment every measured process gets, the same for incrml and the baseline.

    Bytecode writing is on (PYTHONDONTWRITEBYTECODE unset), the venv's bin comes first on PATH,
    and nothing inherited steers incrml, MLflow or rich away from their defaults.
    """
    drop = {"PYTHONDONTWRITEBYTECODE", "MLFLOW_TRACKING_URI", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("INCRML_")}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cmd: list[str | Path], cwd: Path, check: bool = True, timeout: float = STEP_TIMEOUT, env: dict | None = None) -> Run:
    """Run `cmd` to completion, timed with perf_counter, its tree's peak RSS taken from wait4.

    wait4 reports the child's own usage together with that of every descendant it waited for
    (DVC's stage processes, incrml's worker and its forks), and ru_maxrss is the largest of them.
    """
    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        # Its own session, so a timeout or Ctrl-C can stop the whole tree this started, and only it.
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**bench_env(), **(env or {})}, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Run(
            cmd, seconds, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
            usage.ru_maxrss * 1024,  # Linux reports kilobytes
        )
    if check and result.returncode != 0:
        what = "timed out" if seconds >= timeout else f"exited {result.returncode}"
        raise StepFailed(f"`{' '.join(cmd[-3:])}` {what}\n{tail(result)}")
    return result


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(result: Run, lines: int = 15) -> str:
    """The end of a failed process's output: stderr, or stdout if stderr is empty."""
    text = result.stderr.strip() or result.stdout.strip()
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


@dataclass
class Ingest:
    """One measured ingest of one batch."""

    batch: int
    seconds: float
    max_rss: int
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> {"outcome", "seconds"}
    stage_source: str = ""  # "json" (full precision) or "text" (0.1 s resolution)
    metrics: dict[str, float] = field(default_factory=dict)

    def stage_seconds(self, names: tuple[str, ...]) -> float:
        return sum(self.stages[name]["seconds"] for name in names if name in self.stages)

    def as_dict(self) -> dict:
        return asdict(self)


class Workspace:
    """A workspace in a temporary folder: incrml's (`incrml init`) or the seed baseline's."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root, self.kind = root, kind

    @classmethod
    def create(cls, root: Path, kind: str) -> Workspace:
        if kind == "incrml":
            run([INCRML, "init", root], cwd=root.parent)
        else:
            run([sys.executable, BASELINE / "make_workspace.py", root], cwd=root.parent)
        return cls(root, kind)

    def ingest(self, batch: int, as_json: bool = False, stage_stats: Path | None = None) -> Ingest:
        """One ingest; with `stage_stats`, incrml's stages append their time and memory there."""
        if self.kind == "incrml":
            cmd = [INCRML, "ingest-batch", str(batch), *(["--json"] if as_json else [])]
        else:
            cmd = [sys.executable, BASELINE / "run.py", self.root, str(batch)]
        env = {"INCRML_STAGE_STATS": str(stage_stats)} if stage_stats else None
        result = run(cmd, cwd=self.root, env=env)
        stages, source = parse_stages(result.stdout) if self.kind == "incrml" else ({}, "")
        return Ingest(batch, result.seconds, result.max_rss, stages, source, self.metrics())

    def metrics(self) -> dict[str, float]:
        path = self.root / "metrics/metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def configure(self, *, source: dict | None = None, batch_size: int | None = None,
                  holdout_fraction: float | None = None, incremental: bool = False) -> None:
        """Edit params.yaml in place (comments kept); the full strategy is the default, so it adds nothing."""
        from ruamel.yaml import YAML

        yaml = YAML()
        path = self.root / "params.yaml"
        doc = yaml.load(path.read_text())
        data, train = doc.setdefault("data", {}), doc.setdefault("train", {})
        if source is not None:
            data["source"] = source
        if batch_size is not None:
            data["batch_size"] = batch_size
        if holdout_fraction is not None:
            data["holdout_fraction"] = holdout_fraction
        if incremental:
            train["strategy"] = "incremental"
            train["estimator"] = {"kind": "sgd"}
        with path.open("w") as handle:
            yaml.dump(doc, handle)

    def params_error(self) -> str | None:
        """None if incrml accepts params.yaml, else its one-line error (`incrml status` validates it)."""
        result = run([INCRML, "status", "--json"], cwd=self.root, check=False)
        if result.returncode == 0:
            return None
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        return lines[-1].replace(f"{self.root}/", "") if lines else f"incrml status exited {result.returncode}"

    def lock_md5(self, stage: str, path: str) -> str | None:
        """The md5 dvc.lock records for one output of one stage."""
        from ruamel.yaml import YAML

        lock = self.root / "dvc.lock"
        if not lock.exists():
            return None
        entry = (YAML(typ="safe").load(lock.read_text()) or {}).get("stages", {}).get(stage, {})
        return next((out.get("md5") for out in entry.get("outs", []) if out.get("path") == path), None)


_STAGE_LINE = re.compile(r"^(?P<stage>[a-z][a-z0-9_]*)\s+(?P<outcome>\S.*?)\s+(?P<seconds>\d+(?:\.\d+)?)s\s*$")


def parse_stages(stdout: str) -> tuple[dict[str, dict], str]:
    """Per-stage outcome and seconds from an ingest's stdout.

    Prefers a JSON document with a "stages" entry (full precision), and otherwise reads the
    lines incrml prints when stdout is not a terminal: `merge_data     ✓ ran 1.5s`.
    """
    document = _json_document(stdout)
    if isinstance(document, dict) and document.get("stages"):
        stages = document["stages"]
        items = stages.items() if isinstance(stages, dict) else ((s.get("stage") or s.get("name"), s) for s in stages)
        return {name: {"outcome": s.get("outcome", ""), "seconds": float(s["seconds"])} for name, s in items}, "json"
    stages = {}
    for line in stdout.splitlines():
        match = _STAGE_LINE.match(line.strip())
        if match:
            text = match["outcome"]
            outcome = "restored" if "restored" in text else "unchanged" if "up to date" in text else "ran" if "ran" in text else text
            stages[match["stage"]] = {"outcome": outcome, "seconds": float(match["seconds"])}
    return stages, "text"


def _json_document(stdout: str):
    if stdout.startswith("{"):
        start = 0
    elif "\n{" in stdout:
        start = stdout.index("\n{") + 1
    else:
        return None
    try:
        return json.loads(stdout[start:])
    except ValueError:
        return None


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (apparent size, like `du -sb` without the folders), each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def table_bytes(folder: Path) -> tuple[int, int]:
    """(rows, in-memory bytes) of the Parquet partitions in `folder`, as pyarrow tables."""
    import pyarrow.parquet as pq

    rows = nbytes = 0
    for part in sorted(folder.glob("*.parquet")):
        table = pq.read_table(part)
        rows += table.num_rows
        nbytes += table.nbytes
    return rows, nbytes


def compile_bytecode() -> tuple[float, list[str]]:
    """Byte-compile site-packages and the incrml package, so every process imports from .pyc."""
    import importlib.util
    import sysconfig

    paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    spec = importlib.util.find_spec("incrml")
    targets = [*paths, *(spec.submodule_search_locations or [])] if spec else list(paths)
    # Some packages ship deliberately invalid files (test fixtures); compileall reports them and
    # exits non-zero, which does not matter here.
    result = run([sys.executable, "-m", "compileall", "-q", "-j", "0", *targets], cwd=REPO, check=False)
    return result.seconds, targets


def rows_for_batches(batches: int, batch_size: int, holdout_fraction: float) -> int:
    """The fewest source rows whose stream (after incrml's ceil-rounded holdout) holds `batches` batches."""
    import math

    rows = int(batches * batch_size / (1 - holdout_fraction))
    while rows - math.ceil(rows * holdout_fraction) < batches * batch_size:
        rows += 1
    return rows
