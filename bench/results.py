"""The benchmark's outputs: the machine it ran on, results.md, results.json and the time-per-batch plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime
from importlib import metadata
from pathlib import Path

from measure import REPO


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for name in ("dvc", "mlflow", "scikit-learn", "pandas", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _commit(),
        "versions": versions,
    }


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value, digits: int = 2, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def render_markdown(data: dict) -> str:
    """results.md: the targets table, the machine, and the per-batch numbers behind them."""
    m, cfg = data["machine"], data["config"]
    lines = [
        "# incrml benchmark results",
        "",
        f"`uv run python bench/run.py{' --quick' if cfg['quick'] else ''}`, {m['date']}, "
        f"total run time {data['total_seconds'] / 60:.1f} min.",
    ]
    if cfg["quick"]:
        lines += ["", "**Quick mode**: the scale stream is reduced "
                  f"({cfg['scale_rows_stream']:,} rows in batches of {cfg['scale_batch_size']:,}); "
                  "targets 4 and 5 are not the issue's numbers in this mode."]
    lines += ["", "## Targets", "", "| # | target | measured | limit | result |", "| --- | --- | --- | --- | --- |"]
    for t in data["targets"]:
        lines.append(f"| {t['key']} | {_cell(t['name'])} | {_cell(t['measured'])} | {_cell(t['limit'])} | **{t['status']}** |")
    notes = [(t["key"], n) for t in data["targets"] for n in [*t["notes"], *t["errors"]]]
    if notes:
        lines += ["", "Notes and errors:", ""] + [f"- {key}: {_cell(note)}" for key, note in notes]
    ram = f"{m['ram_bytes'] / 2**30:.1f} GiB" if m["ram_bytes"] else "unknown"
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines += [
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {ram}",
        f"- Python: {m['python']} ({m['os']})",
        f"- incrml: commit {m['commit']}; {versions}",
        f"- Date: {m['date']}",
        _load_line(data),
        "",
        "## Method",
        "",
        "- Every number is measured in this run; ratios compare two measurements made minutes apart "
        "on the same machine. Workspaces are fresh temporary folders made with `incrml init` "
        "(and the baseline's `make_workspace.py`), never the checkout.",
        f"- Bytecode: at the start the venv's site-packages and the incrml package were byte-compiled "
        f"(`python -m compileall`, {data['compile_seconds']:.0f} s), and every measured process ran with "
        "PYTHONDONTWRITEBYTECODE unset, so both sides import from `.pyc` files.",
        "- Warm-up: before anything was timed, one untimed ingest on each side (incrml: batch 3 "
        "straight into a fresh workspace, which is also reproducibility check (b); baseline: batch 1), "
        "so the OS file cache holds the libraries both sides import. In every workspace batch 1 is untimed for target 1.",
        "- Wall times are `time.perf_counter()` around the whole subprocess (`incrml ingest-batch N`, "
        "or `python bench/seed_baseline/run.py WS N`). Peak memory is `ru_maxrss` from `os.wait4` on the "
        "ingest: the largest process in its tree (the CLI, DVC's stage processes, incrml's worker and its forks).",
        f"- Per-stage times come from the ingest's own per-stage report ({_stage_source(data)}).",
        "- `.dvc/cache` sizes count each file's bytes once per inode (folders not counted).",
        f"- Scale stream: synthetic, {cfg['scale_rows_source']:,} rows x {cfg['features']} features, 2 classes, "
        f"holdout_fraction {cfg['holdout_fraction']}, so the stream holds {cfg['scale_rows_stream']:,} rows = "
        f"{cfg['scale_rows_stream'] // cfg['scale_batch_size']} batches of {cfg['scale_batch_size']:,}; batch "
        f"{cfg['scale_batches']} trains on {cfg['scale_batches'] * cfg['scale_batch_size']:,} rows. Ingested in one "
        f"workspace per strategy, in this order: {', '.join(map(str, cfg['scale_order']))} "
        f"(the jump to {cfg['scale_batches'] - 1} makes merge_data rebuild the skipped partitions once).",
        f"- Target 4a compares the median of batches {_span(cfg['early'])} with the median of batches "
        f"{_span(cfg['late'])}: one batch's data stages take about a second, and a single pair flips with the "
        "machine's noise. Targets 4b and 5 are measured on batch "
        f"{cfg['scale_batches']} alone.",
        "- Train strategies: `full` is params.yaml's default (logistic regression refitted on batches 1..N); "
        "`incremental` sets `train.strategy: incremental` and `train.estimator: {kind: sgd}`.",
    ]
    lines += _strategy_section(data)
    lines += _digits_section(data)
    lines += _scale_section(data)
    return "\n".join(lines) + "\n"


def _load_line(data: dict) -> str:
    load, cores = data["load_average"], data["machine"]["cores"] or 1
    line = (f"- Load average (1 min) during the run: {load['start']:.2f} at the start, {load['max']:.2f} at most, "
            f"{load['end']:.2f} at the end.")
    if load["max"] > cores + 0.5:  # an ingest alone keeps about one to one and a half cores busy
        line += " Other work was running on the machine: absolute times are inflated, and ratios are noisier."
    return line


def _span(batches: list[int]) -> str:
    return f"{batches[0]}-{batches[-1]}"


def _stage_source(data: dict) -> str:
    sources = {i.get("stage_source") for s in data["scale"].values() for i in s.get("ingests", {}).values()}
    sources |= {i.get("stage_source") for s in data["digits"].values() for i in s.get("ingests", {}).values()}
    sources.discard("")
    sources.discard(None)
    if sources == {"json"}:
        return "`ingest-batch N --json`, full precision"
    if "json" in sources:
        return "`--json` at scale, the text lines elsewhere"
    return "the text lines `stage  ✓ ran 1.5s`, so 0.1 s resolution"


def _strategy_section(data: dict) -> list[str]:
    status = data.get("incremental_status")
    if not status:
        return []
    return ["", f"Incremental strategy: {status}"]


def _digits_section(data: dict) -> list[str]:
    digits = data["digits"]
    sides = [("baseline", "seed baseline"), ("full", "incrml full"), ("incremental", "incrml incremental")]
    batches = sorted({int(n) for side, _ in sides for n in digits.get(side, {}).get("ingests", {})})
    if not batches:
        return []
    columns = [("baseline", "seed baseline", False), ("full", "incrml full", True), ("incremental", "incrml incremental", True)]
    header = [f"{label} s" + (f" | {label} train s" if staged else "") + f" | {label} accuracy"
              for _, label, staged in columns]
    lines = ["", "## Per batch: digits (50-row batches), one fresh workspace per side", "",
             "| batch | " + " | ".join(header) + " |",
             "| --- |" + " --- |" * sum(3 if staged else 2 for *_, staged in columns)]
    for n in batches:
        cells = []
        for side, _, staged in columns:
            ingest = digits.get(side, {}).get("ingests", {}).get(str(n))
            if ingest is None:
                cells += ["–"] * (3 if staged else 2)
                continue
            cells.append(_num(ingest["seconds"], 1))
            if staged:
                cells.append(_num(ingest["stages"].get("train", {}).get("seconds"), 1))
            cells.append(_num(ingest["metrics"].get("accuracy"), 4))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for side, label, _ in columns:
        if digits.get(side, {}).get("error"):
            lines.append(f"\n{label}: {digits[side]['error']}")
    lines += ["", "The baseline holds out other rows than incrml (`train_test_split(stratify=...)` against incrml's "
              "permutation), so its accuracy is close to, not the same measurement as, incrml's."]
    lines += ["", "![time per batch](time_per_batch.png)", "", _plot_caption(data)]
    return lines


def _scale_section(data: dict) -> list[str]:
    scale = data["scale"]
    lines = ["", "## Per batch: the scale stream, full vs incremental", ""]
    for strategy in ("full", "incremental"):
        entry = scale.get(strategy, {})
        if entry.get("error"):
            lines.append(f"- {strategy}: {entry['error']}")
    batches = sorted({int(n) for s in scale.values() for n in s.get("ingests", {})})
    if not batches:
        return lines
    labels = ("wall s", "data stages s", "train s", "evaluate s", "accuracy", "peak RSS MiB")
    lines += ["", "| batch | " + " | ".join(f"{s} {label}" for s in ("full", "incr.") for label in labels) + " |",
              "| --- |" + " --- |" * (2 * len(labels))]
    for n in batches:
        cells = []
        for strategy in ("full", "incremental"):
            ingest = scale.get(strategy, {}).get("ingests", {}).get(str(n))
            if ingest is None:
                cells += ["–"] * len(labels)
                continue
            stages = ingest["stages"]
            data_s = sum(stages[s]["seconds"] for s in ("prepare_batch", "merge_data", "preprocess") if s in stages)
            cells += [
                _num(ingest["seconds"], 1),
                _num(data_s if stages else None, 2),
                _num(stages.get("train", {}).get("seconds"), 2),
                _num(stages.get("evaluate", {}).get("seconds"), 2),
                _num(ingest["metrics"].get("accuracy"), 4),
                _num(ingest["max_rss"] / 2**20, 0),
            ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for strategy in ("full", "incremental"):
        extra = scale.get(strategy, {})
        if "cache_before" in extra:
            lines.append(
                f"\n{strategy}: .dvc/cache {extra['cache_before']:,} → {extra['cache_after']:,} bytes at batch "
                f"{data['config']['scale_batches']}; data/processed/batch.parquet {extra['batch_bytes']:,} bytes; "
                f"training data in memory {extra.get('train_rows', 0):,} rows, {extra.get('train_nbytes', 0):,} bytes "
                f"(pyarrow Table.nbytes; rows x (features x 4 + 8) = {extra.get('formula_bytes', 0):,})."
            )
    return lines


def _plot_caption(data: dict) -> str:
    cfg = data["config"]
    return (
        f"Left: wall time of each ingest on the digits stream, batches 1..{cfg['plot_batches']}, for the seed "
        "baseline and incrml's two strategies, each in one fresh workspace. Batch 1 includes get_data; from batch 2 "
        "on, the time is the per-batch overhead, since digits batches are tiny. Right: the scale stream, wall time "
        f"(solid) and the train stage alone (dashed) at batches {', '.join(map(str, cfg['scale_order']))} "
        f"(1 includes get_data, {cfg['scale_batches'] - 1} rebuilds the skipped partitions). With the full strategy "
        "the train stage grows with the rows trained on; with the incremental one it should stay flat."
    )


def write_plot(data: dict, path: Path) -> str | None:
    """The time-per-batch PNG; None when drawn, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib not importable ({exc})"
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"baseline": ("seed baseline (dvc repro)", "tab:gray"), "full": ("incrml full", "tab:blue"),
              "incremental": ("incrml incremental", "tab:orange")}
    for side, (label, colour) in styles.items():
        ingests = data["digits"].get(side, {}).get("ingests", {})
        if ingests:
            xs = sorted(int(n) for n in ingests)
            left.plot(xs, [ingests[str(n)]["seconds"] for n in xs], marker="o", label=label, color=colour)
    left.set(title="digits, 50-row batches: wall time per ingest", xlabel="batch number", ylabel="seconds")
    left.set_ylim(bottom=0)
    left.xaxis.get_major_locator().set_params(integer=True)
    left.grid(alpha=0.3)
    left.legend()
    for strategy in ("full", "incremental"):
        ingests = data["scale"].get(strategy, {}).get("ingests", {})
        if not ingests:
            continue
        label, colour = styles[strategy]
        xs = sorted(int(n) for n in ingests)
        positions = range(len(xs))
        right.plot(positions, [ingests[str(n)]["seconds"] for n in xs], marker="o", color=colour, label=f"{label}: wall")
        train = [ingests[str(n)]["stages"].get("train", {}).get("seconds") for n in xs]
        if all(t is not None for t in train):
            right.plot(positions, train, marker="s", linestyle="--", color=colour, label=f"{label}: train stage")
        right.set_xticks(list(positions), [str(n) for n in xs])
    cfg = data["config"]
    right.set(
        title=f"synthetic stream, {cfg['features']} features, batches of {cfg['scale_batch_size']:,}",
        xlabel="batch number (not to scale)", ylabel="seconds",
    )
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
