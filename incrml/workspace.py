"""Where things live in a workspace, how to find its root, and how to make a new one."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from incrml.errors import IncrmlError

TEMPLATE_DIR = Path(__file__).parent / "template"


@dataclass(frozen=True)
class Layout:
    """The paths of one workspace; dvc.yaml declares the same ones."""

    root: Path

    @property
    def batch_files(self) -> Path:
        """A files stream's accepted batches (`ingest-batch --file`), batch-00001.parquet on."""
        return self.root / "data/source/batches"

    def batch_file(self, batch: int) -> Path:
        return self.batch_files / f"batch-{batch:05d}.parquet"

    @property
    def stream(self) -> Path:
        return self.root / "data/raw/stream.parquet"

    @property
    def holdout(self) -> Path:
        return self.root / "data/raw/holdout.parquet"

    @property
    def schema(self) -> Path:
        return self.root / "data/raw/schema.json"

    @property
    def batch(self) -> Path:
        return self.root / "data/processed/batch.parquet"

    @property
    def batch_stats(self) -> Path:
        return self.root / "data/processed/batch_stats.json"

    @property
    def merged(self) -> Path:
        return self.root / "data/merged"

    @property
    def preprocessor(self) -> Path:
        return self.root / "models/preprocessor.json"

    @property
    def model(self) -> Path:
        return self.root / "models/model.pkl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics/metrics.json"

    @property
    def run_record(self) -> Path:
        return self.root / "metrics/run.json"

    @property
    def drift(self) -> Path:
        """The new batch against the merged history (merge_data; see incrml.drift)."""
        return self.root / "metrics/drift.json"

    @property
    def history(self) -> Path:
        return self.root / "metrics/history.json"

    @property
    def learning_curve(self) -> Path:
        return self.root / "metrics/learning_curve.png"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    @property
    def checkpoints(self) -> Path:
        """The incremental strategy's per-step models: a cache outside DVC's outputs."""
        return self.root / ".dvc/tmp/incrml-checkpoints"

    @property
    def drift_memo(self) -> Path:
        """Drift reports already computed, by the hash of everything they depend on: a batch seen
        again (merge_data re-runs, its output being `persist`) gets its report without the maths."""
        return self.root / ".dvc/tmp/incrml-drift"

    @property
    def params_backup(self) -> Path:
        """params.yaml as it was before an ingest changed batch_number, until the ingest ends."""
        return self.root / ".dvc/tmp/incrml-params.yaml"

    @property
    def run_marker(self) -> Path:
        """The MLflow run an evaluate is logging right now, and its process: a killed one is repaired."""
        return self.root / ".dvc/tmp/incrml-run.json"


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds dvc.yaml, params.yaml and .dvc/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            if not (folder / ".dvc").is_dir():
                raise IncrmlError(f"{folder} has dvc.yaml but DVC is not initialised (run `dvc init`)")
            return folder
    raise IncrmlError(
        f"not inside an incrml workspace (no dvc.yaml and params.yaml in {here} or above); "
        "run `incrml init DIR` to make one"
    )


def init_workspace(target: Path, from_files: bool = False) -> Path:
    """Make a new workspace at `target`: dvc.yaml, params.yaml, data/, and DVC initialised.

    Inside a git repository DVC uses git; elsewhere it runs without SCM. The stage code is
    the installed incrml package, so dvc.yaml here lists no code files among the deps.
    `from_files` makes a files workspace: its batches are files accepted by `ingest-batch --file`.
    """
    target = target.resolve()
    if target.exists() and not target.is_dir():
        raise IncrmlError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()):
        raise IncrmlError(f"{target} is not empty; choose a new or empty folder")
    from incrml.pipeline import init_repo

    target.mkdir(parents=True, exist_ok=True)
    try:
        for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
            shutil.copyfile(TEMPLATE_DIR / name, target / name)
        if from_files:
            _use_files_stream(target)
        for folder in ("data/source",):
            (target / folder).mkdir(parents=True, exist_ok=True)
        (target / "data/source/.gitkeep").touch()
        in_git = _in_git(target)
        init_repo(target, in_git=in_git, subdir=in_git and not (target / ".git").exists())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _use_files_stream(root: Path) -> None:
    """The files stream's dvc.yaml (its stages read data/source/batches/), and `kind: files`."""
    (root / "dvc.yaml").write_text(files_dvc_yaml((TEMPLATE_DIR / "dvc.yaml").read_text()))
    params = root / "params.yaml"
    text, count = re.subn(r"(?m)^(    kind: )digits$", r"\1files", params.read_text(), count=1)
    if count != 1:
        raise IncrmlError("the params.yaml template has no `kind: digits` line to set")
    params.write_text(text)


def files_dvc_yaml(template: str) -> str:
    """The template's dvc.yaml for a files stream, made from it so the two cannot drift apart:
    get_data reads file 1 only, prepare_batch and merge_data the batches folder, and no stage
    reads data.batch_size (a batch is a whole file)."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: the template's comments and layout stay
    yaml.indent(mapping=2, sequence=4, offset=2)
    pipeline = yaml.load(template)
    stages = pipeline["stages"]
    deps = stages["get_data"]["deps"]
    deps[deps.index("data/source")] = "data/source/batches/batch-00001.parquet"
    for name in ("prepare_batch", "merge_data"):
        deps = stages[name]["deps"]
        deps.insert(deps.index("data/raw/schema.json") + 1, "data/source/batches")
        stages[name]["params"].remove("data.batch_size")
    text = io.StringIO()
    yaml.dump(pipeline, text)
    return "# A files workspace: batch N is the Nth file `incrml ingest-batch --file` accepted.\n" + text.getvalue()


def _in_git(path: Path) -> bool:
    return any((p / ".git").exists() for p in (path, *path.parents))
