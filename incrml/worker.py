"""A warm stage worker: fork servers that import the heavy libraries once per ingest.

DVC runs every stage as a new process, and most of such a process's life goes to importing
scikit-learn, pandas and MLflow. While incrml drives DVC, two zygote processes hold those
imports: the data zygote imports what every stage needs (pandas, SciPy, scikit-learn), then
forks the model zygote, which goes on to MLflow for evaluate while the data zygote serves the
data stages and train. The shared imports are made once, and evaluate's long chain of imports
starts from them. Each stage command, finding INCRML_WORKER in its environment, asks its
zygote to fork a child that runs the very same stage function in the stage's folder and
environment, and exits with the child's exit code. DVC still starts, times and checks every
stage. `dvc repro` from a shell runs each stage in its own process as usual: the same code, the
same outputs.
"""

from __future__ import annotations

import gc
import importlib
import io
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
# What each zygote imports, in order. A stage is served once its module is imported, and so
# everything listed before it; it goes to the zygote that lists its module. "@model" is where
# the data zygote forks the model zygote, which starts with everything imported before it.
ZYGOTES = {
    "data": (
        "numpy",
        "pyarrow.parquet",
        "incrml.config",  # every stage validates params.yaml first: pydantic, and ruamel.yaml
        "ruamel.yaml",
        "pandas",
        "incrml.stages.prepare_batch",
        "scipy.stats",  # merge_data's drift check; scikit-learn imports it too
        "incrml.stages.merge_data",
        "incrml.stages.preprocess",
        "sklearn.linear_model",
        "sklearn.pipeline",
        "sklearn.preprocessing",
        "joblib",
        "incrml.stages.train",
        "@model",
        "incrml.stages.get_data",
    ),
    "model": (
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
        # log_model checks the pinned requirements against an index of every installed package.
        "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
        "incrml.stages.evaluate",
    ),
}
FORK = "@"


_started: list[str] = []  # the worker folder this process runs, if any


def zygotes() -> frozenset[int]:
    """The pids of the zygotes this process runs (none outside warm_worker)."""
    pids = set()
    for folder in _started:
        for name in ZYGOTES:
            with suppress(OSError, ValueError), open(os.path.join(folder, f"{name}.pid")) as handle:
                pids.add(int(handle.read()))
    return frozenset(pids)


@contextmanager
def warm_worker() -> Iterator[dict[str, str]]:
    """Run the zygotes for the duration of the block; yields the environment that points stages
    at them (a folder holding a socket and a pid file per zygote)."""
    if not hasattr(os, "fork") or os.environ.get(DISABLE_ENV) or os.environ.get(WORKER_ENV):
        yield {}  # no worker wanted, or this process started one already (incrml.launch)
        return
    folder = tempfile.mkdtemp(prefix="incrml-")
    _started.append(folder)
    first, servers = None, {}
    try:
        # Every socket listens from the start: a stage that asks for a zygote not forked yet
        # waits in the backlog. Each is then held open by its zygote alone (or the one that
        # will fork it), so a stage asking a zygote that has died is refused at once.
        for name in ZYGOTES:
            servers[name] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            servers[name].bind(os.path.join(folder, name))
            servers[name].listen(4)
        first = _fork_zygote(folder, next(iter(ZYGOTES)), servers)
        yield {WORKER_ENV: folder}
    finally:
        # DVC is done, so no stage is being served: end the zygotes now, even mid-import; a
        # forked one before its parent, which reaps it.
        for pid in sorted(zygotes() | {first} - {None}, key=lambda pid: pid == first):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if first is not None:
            with suppress(ChildProcessError):
                os.waitpid(first, 0)
        for server in servers.values():  # left only if the first fork failed
            server.close()
        _started.remove(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _fork_zygote(folder: str, name: str, servers: dict[str, socket.socket]) -> int:
    """Fork the zygote `name`. Of the listening `servers`, it keeps its own and those of the
    zygotes it forks, which are taken out of `servers` and closed here, in the parent. It ends
    with the process that forked it."""
    parent = os.getpid()
    forks = {item.removeprefix(FORK) for item in ZYGOTES[name] if item.startswith(FORK)}
    mine = {key: server for key, server in servers.items() if key == name or key in forks}
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            for key, server in servers.items():
                if key not in mine:
                    server.close()
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # it dies with its parent, even a killed one
            # Imports run a fifth faster without the cycle collector, which finds next to nothing
            # in them (measured: evaluate's imports 2.3 s -> 1.8 s, the same peak RSS).
            gc.disable()
            with open(os.path.join(folder, f"{name}.pid"), "w") as handle:
                handle.write(str(os.getpid()))
            _zygote(folder, name, mine, parent)
        except BaseException:  # noqa: BLE001 - nothing may escape into the CLI's code path
            code = 1
        finally:
            os._exit(code)
    for key in mine:
        servers.pop(key).close()
    return pid


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def prctl(option: int, value: int) -> None:
    """Linux's prctl(2) for this process; elsewhere, or if it fails, nothing happens."""
    with suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _zygote(folder: str, name: str, servers: dict[str, socket.socket], parent: int) -> None:
    # Ctrl-C is for the stage; SIGTERM ends the zygote at its next turn (a stage it started
    # reports its own exit code). Children are reaped by the kernel (SIGCHLD ignored).
    stopping = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if os.getpriority(os.PRIO_PROCESS, 0) < 10:
        os.nice(10)  # a head start must not slow down DVC's own work in the CLI
    server = servers[name]
    pending = list(ZYGOTES[name])
    running: list[int] = []  # pidfds of the stages this zygote forked that still run
    waiting: list[tuple[socket.socket, io.TextIOBase, dict]] = []  # requests for a module still to import
    while os.getppid() == parent and not stopping:
        # A stage whose module is still to be imported waits for it: imported here, with the
        # cycle collector off, it costs less than in the stage's child.
        later = {item.partition(":")[0] for item in pending}
        for request in [r for r in waiting if r[2]["module"] not in later]:
            waiting.remove(request)
            with request[0]:
                child = _serve(*request, servers, waiting)
            with suppress(OSError):  # already gone (Linux < 5.3 has no pidfd): nothing to wait for
                running.append(os.pidfd_open(child))
        # While a stage it forked runs, preloading would only take a core from that stage
        # (on two cores, ~0.2 s of a 4 s ingest in interleaved runs); it goes on once the stage
        # has ended. Not before it has forked the zygotes it forks: their imports come later.
        forked = not any(item.startswith(FORK) for item in pending)
        preloading = bool(pending) and not (running and forked)
        ready, _, _ = select.select([server, *running], [], [], 0 if preloading else 1.0)
        for fd in ready:
            if fd is server:
                connection, _ = server.accept()
                stream = connection.makefile("rw")
                waiting.append((connection, stream, json.loads(stream.readline())))
            else:
                os.close(fd)
                running.remove(fd)
        if ready or not preloading:
            continue
        item = pending.pop(0)
        if item.startswith(FORK):
            _fork_zygote(folder, item.removeprefix(FORK), servers)
            continue
        module, _, warm_up = item.partition(":")
        with suppress(Exception):  # a preload is only ever a head start
            loaded = importlib.import_module(module)
            if warm_up:
                getattr(loaded, warm_up)()


def _serve(connection: socket.socket, stream: io.TextIOBase, request: dict, servers: dict[str, socket.socket],
           waiting: list) -> int:
    """Fork a child that runs the requested stage and reports its own exit code; its pid."""
    gc.freeze()  # what the zygote imported is never scanned by the child's collector
    child = os.fork()
    if child == 0:
        code = 1
        try:
            gc.enable()  # the stage runs as it would in its own process
            for server in servers.values():
                server.close()
            for other, other_stream, _ in waiting:  # those stages' zygote answers them, not this child
                other_stream.close()
                other.close()
            for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                                    (signal.SIGINT, signal.default_int_handler)):
                signal.signal(signum, handler)
            with suppress(OSError):  # the stage itself runs at the CLI's priority, where allowed
                os.setpriority(os.PRIO_PROCESS, 0, request["priority"])
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = request["argv"]  # the stage command's, as MLflow records a run's source
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
    stream.close()
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
            "argv": sys.argv,
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
