"""Create a fresh seed-style baseline workspace: python bench/seed_baseline/make_workspace.py DIR"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def dvc_env() -> dict:
    """The environment with this interpreter's bin dir first on PATH, so `dvc` and `python` are ours."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_workspace.py DIR")
    target = Path(sys.argv[1]).resolve()
    if target.exists() and any(target.iterdir()):
        raise SystemExit(f"{target} exists and is not empty")
    target.mkdir(parents=True, exist_ok=True)

    shutil.copytree(HERE / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(HERE / "dvc.yaml", target / "dvc.yaml")
    shutil.copy2(HERE / "params.yaml", target / "params.yaml")

    env = dvc_env()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=target, env=env, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=target, env=env, check=True)
    print(f"baseline workspace ready at {target}")


if __name__ == "__main__":
    main()
