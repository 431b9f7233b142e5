"""A warm stage worker: a fork server that imports the heavy libraries once per ingest.

DVC runs every stage as a new process, and most of such a process's life goes to importing
scikit-learn, pandas and MLflow. While incrml drives DVC, two zygote processes import them once,
one what the data stages need and one what train and evaluate need, so that neither waits on
the other's imports. Each stage command, finding INCRML_WORKER in its environment, asks its
zygote to fork a child
that runs the very same stage function in the stage's folder and environment, and exits with
the child's exit code. DVC still starts, times and checks every stage. `dvc repro` from a shell
runs each stage in its own process as usual: the same code, the same outputs.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

WORKER_ENV = "INCRML_WORKER"
DISABLE_ENV = "INCRML_NO_WORKER"
# What each zygote imports, in the order its stages need them; a stage goes to the zygote
# that lists its module.
ZYGOTES = {
    "data": (
        "numpy",
        "pyarrow.parquet",
        "incrml.stages.prepare_batch",
        "incrml.stages.merge_data",
        "incrml.stages.preprocess",
        "pandas",
        "incrml.stages.get_data",
        "scipy.stats",  # merge_data's drift check, from batch 2 on
    ),
    "model": (
        "numpy",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "pyarrow.parquet",
        "pandas",
        "joblib",
        "incrml.stages.train",
        "sklearn.metrics",
        "mlflow",
        "mlflow.sklearn",
        "mlflow.models",
        "mlflow.data.meta_dataset",
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
        "alembic.runtime.migration",
        "alembic.script",
        "skops.io",
        "incrml.tracking",
        "incrml.stages.evaluate",
        # log_model checks the pinned requirements against an index of every installed package.
        "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
    ),
}


_running: set[int] = set()  # the zygotes this process started


def zygotes() -> frozenset[int]:
    """The pids of the zygotes this process runs (none outside warm_worker)."""
    return frozenset(_running)


@contextmanager
def warm_worker() -> Iterator[dict[str, str]]:
    """Run the zygotes for the duration of the block; yields the environment that points stages
    at them (a folder holding one socket per zygote)."""
    if not hasattr(os, "fork") or os.environ.get(DISABLE_ENV) or os.environ.get(WORKER_ENV):
        yield {}  # no worker wanted, or this process started one already (incrml.launch)
        return
    folder = tempfile.mkdtemp(prefix="incrml-")
    pids = []
    try:
        for name, preload in ZYGOTES.items():
            pids.append(_start_zygote(os.path.join(folder, name), preload))
            _running.add(pids[-1])
        yield {WORKER_ENV: folder}
    finally:
        # DVC is done, so no stage is being served: end the zygotes now, even mid-import.
        for pid in pids:
            _running.discard(pid)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with suppress(ChildProcessError):
                os.waitpid(pid, 0)
        shutil.rmtree(folder, ignore_errors=True)


def _start_zygote(address: str, preload: tuple[str, ...]) -> int:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(4)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            _zygote(server, parent, preload)
        except BaseException:  # noqa: BLE001 - nothing may escape into the CLI's code path
            code = 1
        finally:
            os._exit(code)
    server.close()
    return pid


def _zygote(server: socket.socket, parent: int, preload: tuple[str, ...]) -> None:
    # Ctrl-C is for the stage; SIGTERM ends the zygote at its next turn (a stage it started
    # reports its own exit code). Children are reaped by the kernel (SIGCHLD ignored).
    stopping = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    os.nice(10)  # a head start must not slow down DVC's own work in the CLI
    pending = list(preload)
    running: list[int] = []  # pidfds of the stages this zygote forked that still run
    while os.getppid() == parent and not stopping:
        # While a stage it forked runs, preloading would only take a core from that stage
        # (on two cores, ~0.2 s of a 4 s ingest in interleaved runs); it goes on once the stage has ended.
        preloading = bool(pending) and not running
        ready, _, _ = select.select([server, *running], [], [], 0 if preloading else 1.0)
        for fd in ready:
            if fd is server:
                connection, _ = server.accept()
                with connection:
                    child = _serve(connection, server)
                with suppress(OSError):  # already gone (Linux < 5.3 has no pidfd): nothing to wait for
                    running.append(os.pidfd_open(child))
            else:
                os.close(fd)
                running.remove(fd)
        if not ready and preloading:
            module, _, warm_up = pending.pop(0).partition(":")
            with suppress(Exception):  # a preload is only ever a head start
                loaded = importlib.import_module(module)
                if warm_up:
                    getattr(loaded, warm_up)()


def _serve(connection: socket.socket, server: socket.socket) -> int:
    """Fork a child that runs the requested stage and reports its own exit code; its pid."""
    stream = connection.makefile("rw")
    request = json.loads(stream.readline())
    child = os.fork()
    if child == 0:
        code = 1
        try:
            server.close()
            for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                    (signal.SIGINT, signal.default_int_handler)):
                signal.signal(signum, handler)
            with suppress(OSError):  # the stage itself runs at the CLI's priority, where allowed
                os.setpriority(os.PRIO_PROCESS, 0, request["priority"])
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            module = importlib.import_module(request["module"])
            from incrml.stages import run_body

            code = run_body(getattr(module, request["function"]))
            stream.write(json.dumps({"exit": code}) + "\n")
            stream.flush()
        except BaseException:  # noqa: BLE001 - the child must never return into the zygote's loop
            pass
        finally:
            os._exit(code)
    stream.write(json.dumps({"pid": child}) + "\n")
    stream.flush()
    return child


def delegate(folder: str, body: Callable) -> int | None:
    """Run `body` in a child of the zygote; its exit code, or None if no worker answered.

    SIGINT and SIGTERM sent to this process are passed on to the child, so Ctrl-C and a kill
    stop the stage itself, as they would a stage that ran here.
    """
    module = sys.modules[body.__module__].__spec__.name
    zygote = next((name for name, preload in ZYGOTES.items() if module in preload), "model")
    env = {k: v for k, v in os.environ.items() if k != WORKER_ENV}
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(os.path.join(folder, zygote))
    except OSError:
        return None
    with connection, connection.makefile("rw") as stream:
        request = {
            "module": module,
            "function": body.__name__,
            "cwd": os.getcwd(),
            "env": env,
            "priority": os.getpriority(os.PRIO_PROCESS, 0),
        }
        stream.write(json.dumps(request) + "\n")
        stream.flush()
        first = stream.readline()
        if not first:
            return None
        # The zygote sends the child's pid, the child its exit code: usually in that order.
        message = json.loads(first)
        if "pid" in message:
            child = message["pid"]

            def forward(signum, frame):
                with suppress(ProcessLookupError):
                    os.kill(child, signum)

            signal.signal(signal.SIGINT, forward)
            signal.signal(signal.SIGTERM, forward)
            second = stream.readline()
            message = json.loads(second) if second else {"exit": 1}  # died without a word: SIGKILL
    return message["exit"]
