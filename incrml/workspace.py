"""Where things live in a workspace, how to find its root, and how to make a new one."""

from __future__ import annotations

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
    def history(self) -> Path:
        return self.root / "metrics/history.json"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"


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


def init_workspace(target: Path) -> Path:
    """Make a new workspace at `target`: dvc.yaml, params.yaml, data/, and DVC initialised.

    Inside a git repository DVC uses git; elsewhere it runs without SCM. The stage code is
    the installed incrml package, so dvc.yaml here lists no code files among the deps.
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
        for folder in ("data/source",):
            (target / folder).mkdir(parents=True, exist_ok=True)
        (target / "data/source/.gitkeep").touch()
        in_git = _in_git(target)
        init_repo(target, in_git=in_git, subdir=in_git and not (target / ".git").exists())
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _in_git(path: Path) -> bool:
    return any((p / ".git").exists() for p in (path, *path.parents))
