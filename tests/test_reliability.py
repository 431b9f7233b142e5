"""Faults with real processes: concurrent ingests, signals, SIGKILL, an unreachable or stopped
tracking server, a full disk, a read-only workspace, an MLflow store from an older MLflow."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import mlflow_runs, one_line_error, snapshot

from incrml.config import load_params
from incrml.pipeline import stale_stages


def incrml(root: Path, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """The real CLI in its own process (and its own session, so a signal can reach its group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "incrml", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def run(root: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = incrml(root, *args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(condition, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def evaluate_running(root: Path) -> bool:
    """True once evaluate has an MLflow run open (its marker names the run and the process)."""
    return (root / ".dvc/tmp/incrml-run.json").exists()


def assert_clean_at(root: Path, batch: int) -> None:
    assert load_params(root).batch_number == batch
    assert stale_stages(root) == {}
    assert not [p for p in root.rglob(".*.tmp-*")], "temporary files left behind"
    assert "RUNNING" not in {r.info.status for r in mlflow_runs(root)[0]}


def test_second_ingest_waits_then_reports_busy(ingested):
    first = incrml(ingested, "ingest-batch", "3")
    lock = ingested / ".dvc/tmp/incrml.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip(), what="the first ingest to take the lock")

    started = time.monotonic()
    busy = run(ingested, "ingest-batch", "4", "--wait", "0.5")
    assert busy.returncode == 75
    assert "workspace busy: `incrml ingest-batch 3`" in one_line_error(busy)
    assert time.monotonic() - started < 10

    patient = run(ingested, "ingest-batch", "4", "--wait", "120")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert patient.returncode == 0, patient.stderr
    assert_clean_at(ingested, 4)


@pytest.mark.parametrize(
    ("signum", "to_group", "shell", "code"),
    [(signal.SIGINT, True, "/bin/sh", 130), (signal.SIGINT, True, "/bin/bash", 130), (signal.SIGTERM, False, "/bin/sh", 143)],
    # DVC runs stage commands with $SHELL, else /bin/sh: bash hands its one command the process,
    # dash (Debian's /bin/sh) stays as its parent and dies of Ctrl-C at once, orphaning it.
    ids=["ctrl-c to the process group, sh", "ctrl-c to the process group, bash", "sigterm to the cli"],
)
def test_signal_during_a_stage_stops_it_and_puts_the_workspace_back(ingested, signum, to_group, shell, code):
    if not Path(shell).exists():
        pytest.skip(f"{shell} is not installed")
    proc = incrml(ingested, "ingest-batch", "3", env={"SHELL": shell})
    wait_for(lambda: evaluate_running(ingested), what="evaluate to open its MLflow run")
    (os.killpg(proc.pid, signum) if to_group else os.kill(proc.pid, signum))
    started = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30, "did not stop promptly"
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    # the put-back adds to the command's stage log, so what the stopped stage said is still there
    assert "Error: stopped by SIG" in (ingested / ".dvc/tmp/incrml-stages.log").read_text()

    runs, _ = mlflow_runs(ingested)
    assert {r.info.status for r in runs if r.data.tags.get("incrml.batch") == "3"} <= {"KILLED", "FAILED"}
    assert_clean_at(ingested, 2)
    assert run(ingested, "ingest-batch", "3").returncode == 0
    assert_clean_at(ingested, 3)


def test_the_stops_after_the_first_cannot_cut_short_ending_the_run_killed():
    """A Ctrl-C reaches evaluate three times (the terminal, the stage command, incrml): the first
    stops it at the next check, and those that come while the run is ended KILLED are ignored."""
    from incrml.stages import _stop
    from incrml.tracking import _stops_between_writes

    saved = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}  # as run_body sets them
    try:
        with pytest.raises(KeyboardInterrupt):
            with _stops_between_writes() as check:
                os.kill(os.getpid(), signal.SIGINT)
                check()
        try:  # where evaluate ends the run KILLED
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # let Python run the handlers
        except KeyboardInterrupt:
            pytest.fail("a later stop interrupted ending the run KILLED")
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_sigkill_mid_stage_is_repaired_by_the_next_command(ingested):
    proc = incrml(ingested, "ingest-batch", "3")
    wait_for(lambda: evaluate_running(ingested), what="evaluate to open its MLflow run")
    killed_run = json.loads((ingested / ".dvc/tmp/incrml-run.json").read_text())["run_id"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not _group_alive(proc.pid), what="the killed process group to exit")

    again = run(ingested, "ingest-batch", "3")
    assert again.returncode == 0, again.stderr
    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(ingested)[0]}
    assert statuses[killed_run] == "KILLED"
    assert_clean_at(ingested, 3)


def test_the_stage_workers_processes_never_outlive_incrml(ingested):
    """The warm worker's zygotes end with the command: one refused before any stage ran, and
    one killed by itself (not its group) while evaluate runs, whose stage still finishes."""
    refused = incrml(ingested, "ingest-batch", "99")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode != 0 and "the stream holds" in err, err
    wait_for(lambda: not _group_alive(refused.pid), timeout=30, what="a refused command's zygotes to end")

    proc = incrml(ingested, "ingest-batch", "3")
    wait_for(lambda: evaluate_running(ingested), what="evaluate to open its MLflow run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not _group_alive(proc.pid), timeout=120, what="every process of the killed command to end")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def silent_server():
    """A TCP port that accepts connections and never answers: a hung tracking server."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def _closed_port_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_tracking_server_fails_fast_naming_it_and_changes_nothing(ingested):
    before = snapshot(ingested)
    uri = _closed_port_uri()
    refused = run(ingested, "ingest-batch", "3", env={"MLFLOW_TRACKING_URI": uri})
    assert refused.returncode == 69
    assert f"MLflow tracking server at {uri} is unreachable" in one_line_error(refused)

    params = ingested / "params.yaml"
    params.write_text(params.read_text().replace("timeout_seconds: 30", "timeout_seconds: 2"))
    before = snapshot(ingested)
    with silent_server() as hung:
        started = time.monotonic()
        timed_out = run(ingested, "ingest-batch", "3", env={"MLFLOW_TRACKING_URI": hung})
        assert time.monotonic() - started < 15
    assert timed_out.returncode == 69
    assert hung in one_line_error(timed_out)
    assert snapshot(ingested) == before


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(uri: str) -> bool:
    """An MLflow server answers its health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1, stopped at the end."""
    port = _free_port()
    home = tmp_path / "server"
    home.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{home}/server.db", "--artifacts-destination", str(home / "artifacts"),
         "--workers", "1"],
        cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(uri), timeout=90, what="mlflow server to start")
        yield uri, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_ingest_against_a_real_tracking_server_then_the_server_stops(workspace, mlflow_server):
    uri, server = mlflow_server
    env = {"MLFLOW_TRACKING_URI": uri}
    assert run(workspace, "ingest-batch", "1", env=env).returncode == 0
    compared = run(workspace, "status", "--json", env=env)
    assert json.loads(compared.stdout)["tracking_uri"] == uri

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("incrml").experiment_id])
    assert [(r.data.tags["incrml.batch"], r.info.status) for r in runs] == [("1", "FINISHED")]

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    before = snapshot(workspace)
    down = run(workspace, "ingest-batch", "2", env=env)
    assert down.returncode == 69 and uri in one_line_error(down)
    assert snapshot(workspace) == before


@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path` (root only; CI runs as root)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _copy_into(src: Path, dst: Path) -> Path:
    dst.mkdir(exist_ok=True)
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)
    return dst


def _fill(disk: Path, leave: int) -> Path:
    """A file that takes all the free space on `disk` but `leave` bytes."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.truncate(0)
        handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def test_disk_full_is_one_line_and_nothing_half_written(ingested, tmp_path):
    with small_disk(tmp_path / "disk", "100m") as disk:
        root = _copy_into(ingested, disk / "ws")
        filler = _fill(disk, leave=16 * 1024)
        before = (root / "params.yaml").read_text()
        full = run(root, "ingest-batch", "3")
        assert "Error:" in one_line_error(full)
        assert (root / "params.yaml").read_text() == before
        assert not [p for p in root.rglob(".*.tmp-*")], "temporary files left behind"

        filler.unlink()
        again = run(root, "ingest-batch", "3")
        assert again.returncode == 0, again.stderr
        assert_clean_at(root, 3)


def test_a_write_failing_in_incrml_itself_puts_the_workspace_back(ingested):
    # The pipeline reproduces batch 3, then keeping its dvc.lock fails (a file where the folder
    # of kept locks goes): an OSError in incrml's own process, not in a stage.
    kept = ingested / ".dvc/tmp/incrml-locks"
    if kept.is_dir():
        for lock in kept.iterdir():
            lock.unlink()
        kept.rmdir()
    kept.write_text("in the way")
    failed = run(ingested, "ingest-batch", "3")
    assert failed.returncode == 74
    assert ".dvc/tmp/incrml-locks" in one_line_error(failed)
    assert_clean_at(ingested, 2)


def test_read_only_workspace_is_one_line_and_changes_nothing(ingested, tmp_path):
    with small_disk(tmp_path / "disk", "200m") as disk:
        root = _copy_into(ingested, disk)
        before = snapshot(root)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        refused = run(root, "ingest-batch", "3")
        assert refused.returncode == 74
        assert "Read-only file system" in one_line_error(refused)
        assert snapshot(root) == before


def test_a_store_from_an_older_mlflow_gets_an_instruction(ingested):
    db = ingested / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # MLflow 1.x's schema
    before = snapshot(ingested)
    for command in (["compare", "1", "2"], ["ingest-batch", "3"]):
        result = run(ingested, *command)
        line = one_line_error(result)
        assert re.search(r"made by an older MLflow; back it up, then run `mlflow db upgrade sqlite:///.*mlflow.db`", line)
    assert snapshot(ingested) == before


def test_ui_binds_loopback_and_warns_for_any_other_host(workspace):
    port = _free_port()
    proc = incrml(workspace, "ui", "--port", str(port))
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=90, what="the MLflow UI")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert "Warning: binding" not in proc.stderr.read()

    # A documentation-range address nobody here has: the warning comes first, then mlflow fails to bind.
    other = run(workspace, "ui", "--host", "192.0.2.1", "--port", str(port), timeout=90)
    assert "Warning: binding 192.0.2.1: anyone who can reach it can read and change the store" in other.stderr
