"""The incrml command line: thin commands over the library; every user mistake is one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from incrml.errors import IncrmlError
from incrml.pipeline import STAGES


class _Group(TyperGroup):
    """Turns usage errors and IncrmlError into one `Error: ...` line on stderr, never a traceback."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # Typer's (vendored Click's) usage errors
            if not exc.format_message():  # bare `incrml`: the help was the answer
                sys.exit(exc.exit_code)
            _fail(exc.format_message(), exc.exit_code)
        except IncrmlError as exc:
            _fail(str(exc), exc.exit_code)
        except OSError as exc:  # a read-only workspace, a full disk, a file that vanished
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}", 74)  # EX_IOERR
        except (KeyboardInterrupt, typer.Abort):
            _fail("interrupted", 130)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)


app = typer.Typer(
    cls=_Group,
    help="Incremental retraining over DVC + MLflow: ingest a batch, retrain, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)

BatchArg = Annotated[str, typer.Argument(metavar="N", help="Batch number, 1 for the first batch.", show_default=False)]
BatchOpt = Annotated[str | None, typer.Option("--batch", metavar="N", help="Set batch_number first.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the data as JSON instead of a table.")]
WaitOpt = Annotated[
    float, typer.Option("--wait", metavar="SECONDS", help="How long to wait for another incrml command in this workspace.")
]
# "-1" must reach our batch parser as a value, not be taken for an unknown option.
_NUMERIC_ARGS = {"ignore_unknown_options": True}


def _root() -> Path:
    from incrml.workspace import find_root

    return find_root()


def _progress(show: bool = True):
    """Per-stage progress: on a terminal a live table with a spinner on the running stage;
    elsewhere (CI logs, pipes) one line per finished stage; nothing if not `show` (--json).
    The finished stages are collected in the list returned last."""
    from contextlib import nullcontext

    from rich.live import Live
    from rich.spinner import Spinner
    from rich.table import Table

    state: dict[str, Any] = {name: ("pending", None) for name in STAGES}
    marks = {"ran": "[green]✓ ran[/]", "restored": "[cyan]↺ restored from DVC cache[/]", "unchanged": "[dim]· up to date[/]"}

    def row(name: str) -> tuple:
        what, seconds = state[name]
        if what == "pending":
            return (f"[dim]{name}[/]", "")
        if what == "running":
            return (Spinner("dots", text=name), "")
        return (name, f"{marks[what]} [dim]{seconds:.1f}s[/]")

    def render() -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(min_width=14)
        for name in state:
            table.add_row(*row(name))
        return table

    live = Live(render(), console=console, refresh_per_second=8) if show and console.is_terminal else None
    finished: list = []

    def on_start(stage: str) -> None:
        state[stage] = ("running", None)
        if live:
            live.update(render())

    def on_done(result) -> None:
        finished.append(result)
        state[result.stage] = (result.outcome, result.seconds)
        if live:
            live.update(render())
        elif show:
            console.print(f"{result.stage:<15}{row(result.stage)[1]}")

    return live or nullcontext(), (on_start, on_done), finished


def _reproduce(batch: str | None, target: str | None, wait: float, command: str, show: bool = True) -> list:
    from incrml.config import load_params
    from incrml.ingest import parse_batch, reproduce_batch

    number = parse_batch(batch) if batch is not None else None
    root = _root()
    if number is None:
        number = load_params(root).batch_number
    display, progress, finished = _progress(show)
    with display:
        reproduce_batch(root, number, target=target, progress=progress, wait=wait, command=command)
    return finished


@app.command("ingest-batch", context_settings=_NUMERIC_ARGS)
def ingest_batch(
    batch: Annotated[str | None, typer.Argument(metavar="N", help="Batch number, 1 for the first batch.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", metavar="PATH", help="Take this CSV or Parquet file as the next batch.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="With --file: accept content already accepted.")] = False,
    as_json: JsonOpt = False,
    wait: WaitOpt = 5.0,
) -> None:
    """Set batch_number to N (or take --file PATH as the next batch), reproduce the pipeline
    through DVC, and compare batches in MLflow."""
    from incrml.config import load_params
    from incrml.report import history_data, render_history

    if file is not None and batch is not None:
        raise IncrmlError("give a batch number or --file PATH, not both: a file becomes the next batch")
    if file is None and (batch is None or force):
        raise IncrmlError("--force goes with --file PATH" if force else "Missing argument 'N' (or --file PATH)")
    if file is None:
        stages = _reproduce(batch, None, wait, f"ingest-batch {batch}", show=not as_json)
    else:
        from incrml.batch_files import ingest_file

        root, (display, progress, stages) = _root(), _progress(show=not as_json)
        with display:
            accepted = ingest_file(root, file, force=force, progress=progress, wait=wait)
        if not as_json:
            stored = accepted.path.relative_to(root)
            console.print(f"Accepted {file} as batch {accepted.batch} ({accepted.rows} rows): {stored}")
    root = _root()
    data = history_data(root, load_params(root))
    if as_json:
        print(json.dumps({"stages": [vars(s) for s in stages], **data}, indent=2))
    else:
        console.print(render_history(data))


@app.command(context_settings=_NUMERIC_ARGS)
def compare(
    first: BatchArg,
    second: BatchArg,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE", help="Also write the learning curve, A and B ringed, as a PNG.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Two batches side by side from MLflow: metrics, deltas, params that differ, lineage."""
    from incrml.config import load_params
    from incrml.ingest import parse_batch
    from incrml.report import compare_data, render_compare

    a, b = parse_batch(first), parse_batch(second)
    root = _root()
    params = load_params(root)
    data = compare_data(root, params, a, b)
    if plot is not None:
        from incrml.report import write_plot

        data["plot"] = str(write_plot(root, params, plot, highlight=(a, b)))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(render_compare(data))
    for note in data["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    if plot is not None:
        console.print(f"Learning curve written to {data['plot']}")


@app.command(context_settings=_NUMERIC_ARGS)
def promote(batch: BatchArg, wait: WaitOpt = 5.0) -> None:
    """Make batch N's model the champion by hand, whatever the gate decided."""
    from incrml.champion import promote as promote_batch
    from incrml.ingest import parse_batch

    done = promote_batch(_root(), parse_batch(batch), wait)
    before = f" (was v{done['previous_champion']})" if done["previous_champion"] else ""
    console.print(f"Champion: v{done['model_version']}, the model of batch {done['batch']}{before}")


@app.command(context_settings=_NUMERIC_ARGS)
def rollback(batch: BatchArg, as_json: JsonOpt = False, wait: WaitOpt = 5.0) -> None:
    """Return the workspace to batch N: params, data, model and metrics restored from DVC's
    cache, and the champion alias on batch N's model."""
    from incrml.champion import rollback as rollback_to
    from incrml.ingest import parse_batch

    number = parse_batch(batch)
    display, progress, _ = _progress(show=not as_json)
    with display:
        done = rollback_to(_root(), number, progress=progress, wait=wait)
    if as_json:
        print(json.dumps(done, indent=2))
        return
    console.print(f"Workspace at batch {done['batch']}; champion: v{done['model_version']}")
    if done["retrained"]:
        console.print(f"[yellow]note:[/] DVC's cache no longer held batch {number}: {', '.join(done['retrained'])} ran again")


@app.command(context_settings=_NUMERIC_ARGS)
def lineage(batch: BatchArg, as_json: JsonOpt = False) -> None:
    """Batch N's lineage: DVC hashes, MLflow run, dataset digest, model version, aliases, checked."""
    from incrml.config import load_params
    from incrml.ingest import parse_batch
    from incrml.report import lineage_data, render_lineage

    root = _root()
    data = lineage_data(root, load_params(root), parse_batch(batch))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(render_lineage(data))
    if not data["ok"]:
        failed = "; ".join(c["check"] for c in data["checks"] if not c["ok"])
        raise IncrmlError(f"lineage of batch {data['batch']} does not hold: not so that {failed}")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Current batch, batches ingested, whether the pipeline is up to date, latest metrics."""
    from incrml.report import render_status, status_data

    data = status_data(_root())
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(render_status(data))


@app.command()
def predict(
    file: Annotated[
        Path,
        typer.Option(
            "--file", metavar="PATH", show_default=False,
            help="The rows to score: a .csv or .parquet file with the model's feature columns. Other columns "
            "(the target column among them) are allowed, ignored by the model and kept in --out.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="PATH", help="Write the rows plus a 'prediction' column to this .csv or .parquet file."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", metavar="champion|vN", help="The registered model version: the champion alias, or v3 (or 3).")
    ] = "champion",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the data as JSON (with the predictions, without --out) instead of a summary.")
    ] = False,
) -> None:
    """Score a CSV or Parquet file with a registered model version from this workspace's MLflow
    store, after checking its columns against the version's signature."""
    from incrml.config import load_params
    from incrml.predict import predict_file, render_predictions

    root = _root()
    data = predict_file(root, load_params(root), file, model=model, out=out)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(render_predictions(data))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A new or empty folder.")],
    from_files: Annotated[
        bool, typer.Option("--from-files", help="Batches are files you add with `ingest-batch --file PATH`.")
    ] = False,
) -> None:
    """Make a new workspace: dvc.yaml, params.yaml, data/, and DVC initialised."""
    from incrml.workspace import init_workspace

    root = init_workspace(directory, from_files=from_files)
    first = "ingest-batch --file PATH" if from_files else "ingest-batch 1"
    console.print(f"Workspace ready at {root}. Next: cd {directory} && incrml {first}")


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Address to bind; the MLflow UI has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
) -> None:
    """The MLflow UI over this workspace's store."""
    import ipaddress
    import subprocess

    from incrml.config import load_params, tracking_uri

    root = _root()
    uri = tracking_uri(load_params(root), root)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"Warning: binding {host}: anyone who can reach it can read and change the store", file=sys.stderr)
    console.print(f"MLflow UI at http://{host}:{port} over {uri} (Ctrl-C stops it)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd, cwd=root))


def _stage_command(stage: str) -> None:
    def command(batch: BatchOpt = None, wait: WaitOpt = 5.0) -> None:
        _reproduce(batch, stage, wait, stage.replace("_", "-"))

    command.__doc__ = f"Run the {stage} stage through DVC (like `dvc repro -s {stage}`)."
    app.command(stage.replace("_", "-"), context_settings=_NUMERIC_ARGS)(command)


for _stage in STAGES:
    _stage_command(_stage)


def main() -> None:
    app()
