"""Measure incrml against the issue's performance targets and against the seed-style baseline.

    uv run python bench/run.py            # the full run (under 20 minutes on 2 cores)
    uv run python bench/run.py --quick    # a reduced scale stream, for development

Prints each step as it goes and each target with PASS/FAIL; writes bench/results/results.md,
results.json and time_per_batch.png. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True  # the harness's own modules must leave no __pycache__ in the checkout
from measure import (  # noqa: E402
    BENCH,
    DATA_STAGES,
    INCRML,
    VENV_BIN,
    Ingest,
    StepFailed,
    Workspace,
    compile_bytecode,
    rows_for_batches,
    run,
    table_bytes,
    tree_bytes,
)
import results  # noqa: E402

RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Config:
    quick: bool
    scale_batch_size: int
    scale_batches: int = 100  # the batch targets 4 and 5 are about
    neighbours: int = 2  # target 4a: batches 2.. and 100.. this many beyond, for a median of three each
    features: int = 20
    holdout_fraction: float = 0.2
    plot_batches: int = 10  # digits batches 1..N per side, for the plot
    reps: int = 5  # target 1: fresh workspaces per side
    cli_reps: int = 5  # target 2: runs of --help and of status

    @property
    def scale_rows_source(self) -> int:
        return rows_for_batches(self.scale_batches + self.neighbours, self.scale_batch_size, self.holdout_fraction)

    @property
    def early(self) -> tuple[int, ...]:
        return tuple(range(2, 3 + self.neighbours))

    @property
    def late(self) -> tuple[int, ...]:
        return tuple(range(self.scale_batches, self.scale_batches + 1 + self.neighbours))

    def as_dict(self) -> dict:
        return {
            "quick": self.quick, "scale_batch_size": self.scale_batch_size, "scale_batches": self.scale_batches,
            "features": self.features, "holdout_fraction": self.holdout_fraction, "plot_batches": self.plot_batches,
            "reps": self.reps, "cli_reps": self.cli_reps, "scale_rows_source": self.scale_rows_source,
            "scale_rows_stream": (self.scale_batches + self.neighbours) * self.scale_batch_size,
            "scale_order": [1, *self.early, self.scale_batches - 1, *self.late],
            "early": list(self.early), "late": list(self.late),
        }


@dataclass
class Target:
    key: str
    name: str
    limit: str
    measured: str = "not measured"
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "PASS" if self.passed and not self.errors else "FAIL"

    def as_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "limit": self.limit, "measured": self.measured,
                "status": self.status, "notes": self.notes, "errors": self.errors}


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, StepFailed):
        return exc.summary
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


class Bench:
    def __init__(self, config: Config, tmp: Path) -> None:
        self.config, self.tmp = config, tmp
        self.started = time.perf_counter()
        scale = f"{config.scale_batch_size:,}-row batches, full"
        early, late = config.early, config.late
        self.targets = {t.key: t for t in (
            Target("1", f"`ingest-batch 2` / seed baseline's batch 2 (digits, median of {config.reps})", "≤ 0.35"),
            Target("2a", f"`incrml --help` (median of {config.cli_reps})", "≤ 0.5 s"),
            Target("2b", f"`incrml status`, ingested workspace (median of {config.cli_reps})", "≤ 1.5 s"),
            Target("3", "re-ingest of batch 2 after 3 / its first run", "≤ 0.2"),
            Target("4a", f"data stages, batch {config.scale_batches} / batch 2 (medians of "
               f"{late[0]}-{late[-1]} / {early[0]}-{early[-1]}; {scale})", "≤ 1.5"),
            Target("4b", f".dvc/cache growth at batch {config.scale_batches} / its batch.parquet bytes", "≤ 1.5"),
            Target("4c", "train strategies full and incremental both run at scale", "both run"),
            Target("5", f"peak memory of ingest {config.scale_batches} (full), beyond each stage's imports / its training data in memory", "≤ 3"),
            Target("R", "data hashes (dvc.lock): ingest 1, 2, 3 vs 3 directly", "equal"),
        )}
        self.data: dict = {"config": config.as_dict(), "digits": {}, "scale": {}}
        self.incremental_error: str | None = None
        self.log_lines: list[str] = []
        self.loads: list[float] = []

    # -- progress --------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.loads.append(os.getloadavg()[0])  # other work on the machine slows both sides; results.md says how much
        line = f"[{time.perf_counter() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        self.log_lines.append(line)

    def step(self, label: str, fn, show=None):
        """Run one step with a progress line; a StepFailed is printed with its output and re-raised."""
        began = time.perf_counter()
        try:
            value = fn()
        except StepFailed as exc:
            self.say(f"{label}: FAILED\n{exc}")
            raise
        self.say(f"{label}: {show(value) if show else f'{time.perf_counter() - began:.1f}s'}")
        return value

    def fail(self, keys: tuple[str, ...], exc: BaseException | str) -> None:
        message = exc if isinstance(exc, str) else _first_line(exc)
        if isinstance(exc, BaseException) and not isinstance(exc, StepFailed):
            self.say(f"unexpected error: {message}\n{traceback.format_exc()}")
        for key in keys:
            self.targets[key].errors.append(message)

    # -- workspaces ------------------------------------------------------------------------

    def workspace(self, kind: str, name: str) -> Workspace:
        root = self.tmp / name
        return self.step(f"{name}: new {kind} workspace", lambda: Workspace.create(root, kind))

    def ingest(self, ws: Workspace, batch: int, label: str, as_json: bool = False, stage_stats: Path | None = None) -> Ingest:
        def show(r: Ingest) -> str:
            train = r.stages.get("train", {})
            extra = f", train {train['outcome']} {train['seconds']:.1f}s" if train else ""
            return f"{r.seconds:.1f}s (peak RSS {r.max_rss / 2**20:.0f} MiB{extra})"

        return self.step(f"{label}: ingest batch {batch}", lambda: ws.ingest(batch, as_json, stage_stats), show)

    def series(self, kind: str, name: str, batches, record: dict | None = None, incremental: bool = False,
               ) -> tuple[Workspace | None, dict[int, Ingest], str | None]:
        """Ingest `batches` in order in a new workspace: (workspace, ingests done, first error or None)."""
        ws, done = None, {}
        try:
            ws = self.workspace(kind, name)
            if incremental:
                ws.configure(incremental=True)
            for n in batches:
                done[n] = self.ingest(ws, n, name)
                if record is not None:
                    record.setdefault("ingests", {})[str(n)] = done[n].as_dict()
        except (StepFailed, OSError) as exc:
            return ws, done, _first_line(exc)
        return ws, done, None

    # -- phases ----------------------------------------------------------------------------

    def setup(self) -> None:
        self.say(f"harness: {sys.executable}; workspaces under {self.tmp}")
        for tool in (INCRML, VENV_BIN / "dvc"):
            if not tool.exists():
                raise SystemExit(f"{tool} not found: run this with the project's venv (`uv run python bench/run.py`)")
        seconds, _ = self.step("byte-compile site-packages and incrml (compileall)", compile_bytecode)
        self.data["compile_seconds"] = seconds
        self.data["machine"] = results.machine()
        m = self.data["machine"]
        self.say(f"machine: {m['cpu']}, {m['cores']} cores, {(m['ram_bytes'] or 0) / 2**30:.1f} GiB, {m['python']}")
        try:
            probe = self.workspace("incrml", "probe-incremental")
            probe.configure(incremental=True)
            self.incremental_error = self.step("does incrml accept train.strategy: incremental?", probe.params_error,
                                               lambda e: "yes" if e is None else f"no ({e})")
        except (StepFailed, OSError, KeyError, ValueError) as exc:
            self.incremental_error = f"could not probe: {_first_line(exc)}"
        self.data["incremental_status"] = (
            "available" if self.incremental_error is None else f"not available: {self.incremental_error}")

    def warm_up(self) -> None:
        """One untimed ingest per side; incrml's is batch 3 straight away, check R's side (b)."""
        try:
            ws = self.workspace("incrml", "direct-3")
            self.ingest(ws, 3, "warm-up (incrml), R (b)")
            self.data["repro_direct"] = self.data_hashes(ws)
        except (StepFailed, OSError) as exc:
            self.fail(("R",), exc)
        try:
            ws = self.workspace("baseline", "baseline-warm-up")
            self.ingest(ws, 1, "warm-up (baseline)")
        except (StepFailed, OSError) as exc:
            self.say(f"baseline warm-up failed: {exc}")

    @staticmethod
    def data_hashes(ws: Workspace) -> dict[str, str | None]:
        return {
            "data/merged": ws.lock_md5("merge_data", "data/merged"),
            "data/processed/batch.parquet": ws.lock_md5("prepare_batch", "data/processed/batch.parquet"),
        }

    def digits(self) -> None:
        """Targets 1, 2, 3 and R on the default digits stream, and the plot's per-batch series."""
        cfg, digits = self.config, self.data["digits"]
        second = {"baseline": [], "incrml": []}  # target 1: batch 2's wall time per fresh workspace
        for rep in range(1, cfg.reps + 1):
            # Rep 1's workspaces continue to batch N for the plot; the sides alternate.
            for kind, side in (("baseline", "baseline"), ("incrml", "full")):
                batches = range(1, cfg.plot_batches + 1) if rep == 1 else (1, 2)
                record = digits.setdefault(side, {}) if rep == 1 else None
                ws, done, error = self.series(kind, f"digits-{side}-{rep}", batches, record)
                if 2 in done:
                    second[kind].append(done[2].seconds)
                else:
                    self.fail(("1",), error)
                if error and record is not None:
                    record["error"] = error
                    if 2 in done:  # a later batch of the plot's series failed: still incrml failing
                        self.fail(("1",), f"{kind}, digits batch {max(done) + 1}: {error}")
                if kind == "incrml" and rep == 1:
                    if done:
                        self.cli_times(ws)
                    else:
                        self.fail(("2a", "2b"), error)
                if kind == "incrml" and rep == 2:
                    if 2 in done and not error:
                        self.reingest(ws, done[2])
                    else:
                        self.fail(("3", "R"), error)
        t1 = self.targets["1"]
        if second["baseline"] and second["incrml"]:
            ours, theirs = statistics.median(second["incrml"]), statistics.median(second["baseline"])
            t1.measured = f"{_ratio(ours, theirs):.2f} ({ours:.2f} s / {theirs:.2f} s)"
            t1.passed = _ratio(ours, theirs) <= 0.35
            t1.notes.append("batch 2 wall per rep: incrml " + ", ".join(f"{s:.2f}" for s in second["incrml"])
                            + " s; baseline " + ", ".join(f"{s:.2f}" for s in second["baseline"]) + " s")
        self.data["target1"] = second
        if self.incremental_error is None:
            record = digits.setdefault("incremental", {})
            _, _, error = self.series("incrml", "digits-incremental-1", range(1, cfg.plot_batches + 1), record,
                                      incremental=True)
            if error:
                record["error"] = error
        else:
            digits["incremental"] = {"error": f"not available: {self.incremental_error}"}

    def cli_times(self, ws: Workspace) -> None:
        for key, args, limit in (("2a", ["--help"], 0.5), ("2b", ["status"], 1.5)):
            target = self.targets[key]
            try:
                times = [self.step(f"incrml {' '.join(args)} ({i + 1}/{self.config.cli_reps})",
                                   lambda args=args: run([INCRML, *args], cwd=ws.root),
                                   lambda r: f"{r.seconds:.2f}s").seconds
                         for i in range(self.config.cli_reps)]
            except (StepFailed, OSError) as exc:
                self.fail((key,), exc)
                continue
            median = statistics.median(times)
            target.measured = f"{median:.2f} s"
            target.passed = median <= limit
            target.notes.append("runs: " + ", ".join(f"{t:.2f}" for t in times) + " s")

    def reingest(self, ws: Workspace, first: Ingest) -> None:
        """Target 3 and check R's side (a), in rep 2's workspace: after 1, 2 comes 3, then 2 again."""
        try:
            self.ingest(ws, 3, ws.root.name)
        except (StepFailed, OSError) as exc:
            self.fail(("3", "R"), exc)
            return
        self.data["repro_in_order"] = self.data_hashes(ws)
        self.repro_check()
        try:
            again = self.ingest(ws, 2, f"{ws.root.name}, target 3: re-ingest")
        except (StepFailed, OSError) as exc:
            self.fail(("3",), exc)
            return
        t3 = self.targets["3"]
        ratio = _ratio(again.seconds, first.seconds)
        t3.measured = f"{ratio:.2f} ({again.seconds:.2f} s / {first.seconds:.2f} s)"
        t3.passed = ratio <= 0.2
        outcomes = ", ".join(f"{stage} {s['outcome']}" for stage, s in again.stages.items())
        t3.notes.append(f"re-ingest stages: {outcomes or 'not reported'}")
        if again.stages.get("train", {}).get("outcome") == "ran":
            t3.notes.append("train ran again on the re-ingest (expected: restored from DVC's run-cache)")
        self.data["target3"] = {"first": first.as_dict(), "again": again.as_dict()}

    def repro_check(self) -> None:
        target = self.targets["R"]
        a, b = self.data.get("repro_in_order"), self.data.get("repro_direct")
        if not a or not b:
            return
        same = a == b and all(a.values())
        target.passed = same
        target.measured = "equal" if same else "differ"
        for path in a:
            target.notes.append(f"{path}: in order {a[path]}, directly {b[path]}")

    def scale(self) -> None:
        """Targets 4a, 4b, 4c and 5 on the synthetic stream, for both train strategies."""
        cfg = self.config
        last = cfg.scale_batches
        for strategy in ("full", "incremental"):
            entry = self.data["scale"].setdefault(strategy, {})
            keys = ("4a", "4b", "4c", "5") if strategy == "full" else ("4c",)
            if strategy == "incremental" and self.incremental_error is not None:
                entry["error"] = f"not available: {self.incremental_error}"
                continue
            try:
                ws = self.workspace("incrml", f"scale-{strategy}")
                ws.configure(
                    source={"kind": "synthetic", "rows": cfg.scale_rows_source, "features": cfg.features, "classes": 2},
                    batch_size=cfg.scale_batch_size, holdout_fraction=cfg.holdout_fraction,
                    incremental=strategy == "incremental",
                )
                done = {}
                for n in (1, *cfg.early, last - 1):
                    done[n] = self.ingest(ws, n, f"scale-{strategy}", as_json=True)
                    entry.setdefault("ingests", {})[str(n)] = done[n].as_dict()
                cache = ws.root / ".dvc/cache"
                entry["cache_before"] = tree_bytes(cache)
                stats = ws.root.parent / f"stage-stats-{strategy}.jsonl"
                done[last] = self.ingest(ws, last, f"scale-{strategy}", as_json=True, stage_stats=stats)
                entry["ingests"][str(last)] = done[last].as_dict()
                entry["stage_stats"] = [json.loads(line) for line in stats.read_text().splitlines()]
                entry["cache_after"] = tree_bytes(cache)
                entry["batch_bytes"] = (ws.root / "data/processed/batch.parquet").stat().st_size
                merged = ws.root / "data/merged"
                rows, nbytes = self.step(f"scale-{strategy}: in-memory size of data/merged at batch {last} (pyarrow)",
                                         lambda merged=merged: table_bytes(merged), lambda v: f"{v[0]:,} rows, {v[1] / 2**20:.1f} MiB")
                entry.update(train_rows=rows, train_nbytes=nbytes, formula_bytes=rows * (cfg.features * 4 + 8))
                for n in cfg.late[1:]:
                    done[n] = self.ingest(ws, n, f"scale-{strategy}", as_json=True)
                    entry["ingests"][str(n)] = done[n].as_dict()
            except (StepFailed, OSError) as exc:
                entry["error"] = f"failed: {_first_line(exc)}"
                self.fail(keys, exc)
                continue
            if strategy == "full":
                self.scale_targets(done, entry)
        t4c = self.targets["4c"]
        ran = [s for s in ("full", "incremental") if "error" not in self.data["scale"].get(s, {"error": 1})]
        t4c.measured = " and ".join(ran) + " ran" if ran else "neither ran"
        t4c.passed = len(ran) == 2
        if "incremental" not in ran:
            t4c.notes.append(f"incremental: {self.data['scale']['incremental'].get('error', 'did not run')}")

    def scale_targets(self, done: dict[int, Ingest], entry: dict) -> None:
        last = self.config.scale_batches
        t4a, t4b, t5 = self.targets["4a"], self.targets["4b"], self.targets["5"]
        cfg = self.config
        missing = sorted({s for n in (*cfg.early, *cfg.late) for s in DATA_STAGES if s not in done[n].stages})
        if missing:
            t4a.errors.append(f"no per-stage time reported for {', '.join(missing)}")
        per_batch = {n: done[n].stage_seconds(DATA_STAGES) for n in (*cfg.early, *cfg.late)}
        early = statistics.median(per_batch[n] for n in cfg.early)
        late = statistics.median(per_batch[n] for n in cfg.late)
        if early > 0:
            t4a.measured = f"{late / early:.2f} ({late:.2f} s / {early:.2f} s)"
            t4a.passed = late / early <= 1.5
        else:
            t4a.measured = f"batches {cfg.early}: data stages took {early:.2f} s (below the reported resolution)"
        single = _ratio(per_batch[last], per_batch[2])
        t4a.notes.append("data stages per batch: " + ", ".join(f"{n}: {v:.2f} s" for n, v in per_batch.items())
                         + f"; batch {last} / batch 2 alone: {single:.2f}")
        if done[2].stage_source == "text":
            t4a.notes.append("stage times read from the text lines: 0.1 s resolution")
        growth = entry["cache_after"] - entry["cache_before"]
        ratio = _ratio(growth, entry["batch_bytes"])
        t4b.measured = f"{ratio:.2f} ({growth:,} B / {entry['batch_bytes']:,} B)"
        t4b.passed = ratio <= 1.5
        # The memory an ingest needs for its data: the most any stage grew above what its process
        # held when the stage began (the interpreter and its imported libraries, ~300 MiB here
        # whatever the data, are not the data's).
        stages = entry.get("stage_stats", [])
        grown = max(stages, key=lambda s: s["rss_growth_kib"]) if stages else None
        size = entry["train_nbytes"]
        if grown:
            growth = grown["rss_growth_kib"] * 1024
            ratio = _ratio(growth, size)
            t5.measured = f"{ratio:.2f} ({growth / 2**20:.0f} MiB in {grown['stage']} / {size / 2**20:.1f} MiB)"
            t5.passed = ratio <= 3
        else:
            t5.errors.append("no per-stage memory reported (INCRML_STAGE_STATS)")
        t5.notes.append(
            "per stage, MiB grown above its start: "
            + ", ".join(f"{s['stage']} {s['rss_growth_kib'] / 1024:.0f}" for s in stages)
            + f"; whole ingest's largest process: {done[last].max_rss / 2**20:.0f} MiB peak RSS"
        )
        t5.notes.append(f"training data: {entry['train_rows']:,} rows; rows x (features x 4 + 8) = "
                        f"{entry['formula_bytes'] / 2**20:.1f} MiB")

    # -- output ----------------------------------------------------------------------------

    def finish(self) -> int:
        self.data["targets"] = [t.as_dict() for t in self.targets.values()]
        self.data["load_average"] = {"start": self.loads[0], "max": max(self.loads), "end": os.getloadavg()[0]}
        self.data["total_seconds"] = time.perf_counter() - self.started
        RESULTS.mkdir(parents=True, exist_ok=True)
        why_not = results.write_plot(self.data, RESULTS / "time_per_batch.png")
        if why_not:
            self.say(f"plot not drawn: {why_not}")
        self.data["total_seconds"] = time.perf_counter() - self.started
        (RESULTS / "results.md").write_text(results.render_markdown(self.data))
        results.write_json(self.data, RESULTS / "results.json")
        (RESULTS / "run.log").write_text("\n".join(self.log_lines) + "\n")
        width = max(len(t.name) for t in self.targets.values())
        print()
        for t in self.targets.values():
            print(f"{t.status:4}  {t.key:>2}  {t.name:<{width}}  {t.measured}  (limit {t.limit})")
            for error in t.errors:
                print(f"            error: {error}")
        print(f"\ntotal {self.data['total_seconds'] / 60:.1f} min; wrote {RESULTS / 'results.md'}, "
              f"results.json, run.log{'' if why_not else ', time_per_batch.png'}")
        return 0 if all(t.status == "PASS" for t in self.targets.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="development run: the scale stream is 100,000 rows in batches of 1,000")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces and say where they are")
    args = parser.parse_args(argv)
    config = Config(quick=args.quick, scale_batch_size=1_000 if args.quick else 10_000,
                    plot_batches=5 if args.quick else 10)
    tmp = Path(tempfile.mkdtemp(prefix="incrml-bench-"))
    bench = Bench(config, tmp)
    try:
        bench.setup()
        for phase, keys in ((bench.warm_up, ("R",)), (bench.digits, ("1", "2a", "2b", "3", "R")),
                            (bench.scale, ("4a", "4b", "4c", "5"))):
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - a bug in one phase must not lose the others' results
                bench.fail(keys, exc)
        return bench.finish()
    finally:
        if args.keep:
            print(f"workspaces kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
