"""Ingest batch N in a baseline workspace: set batch_number=N in params.yaml, then `dvc repro`.

    python bench/seed_baseline/run.py WORKSPACE N

Uses the `dvc` and `python` next to the interpreter running this script. Exits with dvc's code.
"""
import re
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # importing make_workspace must not leave __pycache__ in the repo
from make_workspace import dvc_env  # noqa: E402


def set_batch_number(params: Path, n: int) -> None:
    text = params.read_text()
    new, count = re.subn(r"(?m)^batch_number:.*$", f"batch_number: {n}", text)
    if count != 1:
        raise SystemExit(f"{params}: expected one top-level batch_number line, found {count}")
    params.write_text(new)


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: run.py WORKSPACE N")
    workspace, n = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    set_batch_number(workspace / "params.yaml", n)
    start = time.perf_counter()
    rc = subprocess.run(["dvc", "repro"], cwd=workspace, env=dvc_env()).returncode
    print(f"seed-baseline batch {n}: dvc repro exit {rc}, {time.perf_counter() - start:.1f}s", file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
