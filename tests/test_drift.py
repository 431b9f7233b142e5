"""Drift checks: incrml.drift on frames, merge_data's report and exclusions, the gate end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from incrml import drift
from incrml.config import Params, add_excluded_batch, load_params, parse_params
from incrml.errors import DriftRefused, IncrmlError
from incrml.files import read_json
from incrml.pipeline import stale_stages
from incrml.stages import get_data, merge_data, prepare_batch
from incrml.workspace import TEMPLATE_DIR, Layout

ROWS, FEATURES, BATCH_SIZE, HOLDOUT = 2000, 8, 200, 0.2
DRIFT_BATCH = 3  # k: the synthetic stream drifts from the first row of this batch on
RULE = {"psi_threshold": 0.2, "p_value": 0.01, "max_share": 0.3}


def drift_start_row(batch: int, batch_size: int = BATCH_SIZE) -> int:
    """The source row that becomes the first row of stream batch `batch` once the holdout is out."""
    stream, _ = get_data.split_holdout(pd.DataFrame({"row": np.arange(ROWS)}), HOLDOUT, 42, shuffle_stream=False)
    return int(stream["row"].iloc[(batch - 1) * batch_size])


def source(drifting: bool = True) -> dict:
    extra = {"drift_start_row": drift_start_row(DRIFT_BATCH)} if drifting else {}
    return {"kind": "synthetic", "rows": ROWS, "features": FEATURES, **extra}


def stream(drifting: bool = True) -> pd.DataFrame:
    params = Params(batch_number=1, data={"source": source(drifting)})
    frame = get_data.synthetic_stream(params.data.source, "target", 42)
    return get_data.split_holdout(frame, HOLDOUT, 42, shuffle_stream=False)[0]


def batch_rows(frame: pd.DataFrame, batch: int) -> pd.DataFrame:
    return frame.iloc[(batch - 1) * BATCH_SIZE : batch * BATCH_SIZE]


def names(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "target"]


# -- incrml.drift on frames ---------------------------------------------------------------


def test_a_stream_without_drift_flags_nothing_over_10_batches() -> None:
    frame = stream(drifting=False)
    for batch in range(2, 9):
        stats = drift.compare(batch_rows(frame, batch), frame.iloc[: (batch - 1) * BATCH_SIZE], names(frame), "target", **RULE)
        assert stats["features_drifted"] == [] and stats["drifted"] is False, batch
    rng = np.random.default_rng(0)  # and ten batches of one distribution against their history
    history = pd.DataFrame(rng.normal(size=(200, 20)), columns=[f"f{i}" for i in range(20)]).assign(target=0)
    for batch in range(10):
        new = pd.DataFrame(rng.normal(size=(200, 20)), columns=history.columns[:-1]).assign(target=0)
        assert drift.compare(new, history, list(new.columns[:-1]), "target", **RULE)["drifted"] is False
        history = pd.concat([history, new], ignore_index=True)


def test_a_shift_of_1_5_flags_the_shifted_half_of_the_features() -> None:
    frame = stream()
    stats = drift.compare(batch_rows(frame, DRIFT_BATCH), frame.iloc[: 2 * BATCH_SIZE], names(frame), "target", **RULE)
    assert stats["features_drifted"] == ["x00", "x01", "x02", "x03"]
    assert stats["share_drifted"] == 0.5 and stats["drifted"] is True
    shifted, steady = stats["features"]["x00"], stats["features"]["x07"]
    assert shifted["psi"] > 1 and shifted["ks"] > 0.4 and shifted["p_value"] < 1e-10
    assert steady["drifted"] is False


def test_the_statistics_are_scipys() -> None:
    from scipy.special import rel_entr
    from scipy.stats import chi2_contingency, ks_2samp

    rng = np.random.default_rng(1)
    history, batch = rng.normal(size=500), rng.normal(0.3, 1, size=300)
    stats = drift.numeric_drift(batch, history, 0.2, 0.01)
    test = ks_2samp(batch, history)
    assert (stats["ks"], stats["p_value"]) == (drift._round(test.statistic), drift._round(test.pvalue))
    q, p = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert drift.psi(q * 100, p * 100) == pytest.approx(np.sum((p - q) * np.log(p / q)))
    assert drift.psi(q * 100, p * 100) == pytest.approx(np.sum(rel_entr(p, q) + rel_entr(q, p)))
    colours = pd.Series(["red"] * 60 + ["blue"] * 40), pd.Series(["red"] * 30 + ["blue"] * 70)
    stats = drift.categorical_drift(*colours, 0.2, 0.01)
    expected = chi2_contingency([[60, 40], [30, 70]])
    assert stats["chi2"] == drift._round(expected.statistic) and stats["p_value"] == drift._round(expected.pvalue)


def test_a_constant_feature_never_drifts_but_one_that_starts_varying_does() -> None:
    assert drift.numeric_drift(np.zeros(300), np.zeros(900), 0.2, 0.01) == {
        "kind": "numeric", "psi": 0.0, "ks": 0.0, "p_value": 1.0, "drifted": False}
    woke = drift.numeric_drift(np.arange(300.0) % 7, np.zeros(900), 0.2, 0.01)
    assert woke["drifted"] is True and woke["psi"] > 1
    assert drift.numeric_drift(np.full(5, np.nan), np.ones(5), 0.2, 0.01)["psi"] is None


def test_a_discrete_feature_bins_by_value() -> None:
    """Pixels: mostly 0; a batch where 0 becomes rarer drifts though every decile of the history is 0."""
    rng = np.random.default_rng(2)
    history = np.where(rng.random(2000) < 0.9, 0.0, rng.integers(1, 17, 2000))
    same = np.where(rng.random(300) < 0.9, 0.0, rng.integers(1, 17, 300))
    fewer_zeros = np.where(rng.random(300) < 0.5, 0.0, rng.integers(1, 17, 300))
    assert drift.numeric_drift(same, history, 0.2, 0.01)["drifted"] is False
    assert drift.numeric_drift(fewer_zeros, history, 0.2, 0.01)["drifted"] is True


def test_categorical_features_take_the_chi_square_test() -> None:
    rng = np.random.default_rng(3)
    history = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], 1000, p=[0.5, 0.3, 0.2]), "target": 0})
    same = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], 300, p=[0.5, 0.3, 0.2]), "target": 0})
    moved = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], 300, p=[0.1, 0.3, 0.6]), "target": 0})
    kept = drift.compare(same, history, ["colour"], "target", **RULE)["features"]["colour"]
    assert kept["kind"] == "categorical" and kept["drifted"] is False and "ks" not in kept
    changed = drift.compare(moved, history, ["colour"], "target", **RULE)
    assert changed["features"]["colour"]["p_value"] < 1e-10 and changed["features_drifted"] == ["colour"]
    single = drift.categorical_drift(pd.Series(["a"] * 5), pd.Series(["a"] * 9), 0.2, 0.01)
    assert single["drifted"] is False and single["psi"] == 0.0


def test_label_shift_is_chi_square_and_total_variation() -> None:
    history = pd.Series([0] * 500 + [1] * 500)
    assert drift.label_shift(pd.Series([0] * 100 + [1] * 100), history) == {"chi2": 0.0, "p_value": 1.0, "tv_distance": 0.0}
    shifted = drift.label_shift(pd.Series([0] * 160 + [1] * 40), history)
    assert shifted["tv_distance"] == 0.3 and shifted["p_value"] < 1e-6
    new_class = drift.label_shift(pd.Series([2] * 20 + [0] * 180), history)
    assert new_class["tv_distance"] == pytest.approx(0.5)


def test_the_decision_follows_gate_history_and_exclusion() -> None:
    frame = stream()
    drifted = drift.compare(batch_rows(frame, 3), frame.iloc[:400], names(frame), "target", **RULE)
    steady = drift.compare(batch_rows(frame, 2), frame.iloc[:200], names(frame), "target", **RULE)
    decide = lambda gate, stats, excluded=False, history=(1, 2): drift.report(  # noqa: E731
        3, gate, excluded, list(history), 400, stats)["decision"]
    assert decide("warn", drifted) == "warn" and decide("refuse", drifted) == "refused"
    assert decide("refuse", steady) == "ok" and decide("refuse", drifted, excluded=True) == "excluded"
    assert decide("off", None) == "off" and decide("off", None, excluded=True) == "excluded"
    first = drift.report(1, "refuse", False, [], 0, None)
    assert first["decision"] == "none" and first["drifted"] is False and first["features"] == {}
    message = drift.refusal(drift.report(3, "refuse", False, [1, 2], 400, drifted))
    assert message.startswith("batch 3 drifted from the merged history: 4 of 8 features drifted (x00, x01, x02, x03)")
    assert "Add 3 to data.exclude in params.yaml" in message and "drift.gate: warn" in message


# -- params ---------------------------------------------------------------------------------


def test_drift_params_default_to_the_template_and_are_strict() -> None:
    params = load_params(TEMPLATE_DIR)
    assert params.drift == Params(batch_number=1).drift
    assert (params.drift.gate, params.drift.max_share, params.data.exclude) == ("warn", 0.3, [])
    with pytest.raises(IncrmlError, match="'drift.gate'"):
        parse_params("batch_number: 1\ndrift:\n  gate: block\n")
    with pytest.raises(IncrmlError, match="unknown key 'drift.psi'"):
        parse_params("batch_number: 1\ndrift:\n  psi: 0.1\n")
    with pytest.raises(IncrmlError, match="'data.exclude.0'"):
        parse_params("batch_number: 1\ndata:\n  exclude: [0]\n")


def test_add_excluded_batch_changes_only_the_exclude_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    before = (TEMPLATE_DIR / "params.yaml").read_text()
    path.write_text(before)
    assert add_excluded_batch(tmp_path, 7) is True
    assert add_excluded_batch(tmp_path, 3) is True
    assert add_excluded_batch(tmp_path, 7) is False
    assert path.read_text() == before.replace("  exclude: []\n", "  exclude: [3, 7]\n")
    assert sorted(os.listdir(tmp_path)) == ["params.yaml"]


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("batch_number: 4\ndata:\n    seed: 1  # mine\n", "batch_number: 4\ndata:\n    exclude: [4]\n    seed: 1  # mine\n"),
        ("batch_number: 4\n", "batch_number: 4\ndata:\n  exclude: [4]\n"),
        ("batch_number: 4\ndata:\n  exclude: [2]  # by hand\n", "batch_number: 4\ndata:\n  exclude: [2, 4]  # by hand\n"),
        ("batch_number: 4\ndata:\n  exclude:\n  - 2\n", None),
    ],
    ids=["no-exclude-key", "no-data", "comment-kept", "block-list"],
)
def test_add_excluded_batch_keeps_a_hand_written_params_yaml(tmp_path: Path, text: str, after: str | None) -> None:
    (tmp_path / "params.yaml").write_text(text)
    add_excluded_batch(tmp_path, 4)
    if after is not None:
        assert (tmp_path / "params.yaml").read_text() == after
    assert load_params(tmp_path).data.exclude == ([2, 4] if "2" in text else [4])


def test_add_excluded_batch_refuses_a_broken_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("batch_number: 4\ndata:\n  sede: 1\n")
    with pytest.raises(IncrmlError, match="unknown key 'data.sede'"):
        add_excluded_batch(tmp_path, 4)
    assert (tmp_path / "params.yaml").read_text() == "batch_number: 4\ndata:\n  sede: 1\n"


# -- merge_data: the report, the exclusions, the refusal -------------------------------------


def params_for(batch: int, gate: str = "warn", exclude: tuple[int, ...] = (), history_rows: int = 20_000) -> Params:
    return Params(
        batch_number=batch,
        data={"source": source(), "batch_size": BATCH_SIZE, "exclude": list(exclude)},
        drift={"gate": gate, "history_rows": history_rows},
    )


def ingest(layout: Layout, params: Params) -> dict:
    if not layout.stream.exists():
        get_data.get_data(layout, params)
    prepare_batch.prepare_batch(layout, params)
    merge_data.merge_data(layout, params)
    return read_json(layout.drift)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_merge_data_reports_drift_from_batch_k_on_and_not_before(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    reports = {batch: ingest(layout, params_for(batch)) for batch in range(1, DRIFT_BATCH + 2)}
    assert [reports[b]["decision"] for b in reports] == ["none", "ok", "warn", "warn"]
    assert [reports[b]["drifted"] for b in reports] == [False, False, True, True]
    assert reports[3]["history_batches"] == [1, 2] and reports[3]["history_rows"] == 400
    assert set(reports[3]) == {"batch", "history_batches", "history_rows", "gate", "drifted", "share_drifted",
                               "features_drifted", "label", "decision", "features"}
    json.dumps(reports, allow_nan=False)  # plain JSON: no NaN
    off = ingest(layout, params_for(4, gate="off"))
    assert off["decision"] == "off" and off["features"] == {} and off["history_batches"] == []


def test_the_history_read_is_bounded_and_spread_over_the_batches(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    ingest(layout, params_for(7, history_rows=450))
    report = ingest(layout, params_for(8, history_rows=450))
    assert report["history_rows"] == 450
    assert report["history_batches"] == [1, 2, 4]  # of 1..7: the first, the middle, a quarter (200 + 200 + 50 rows)
    assert list(merge_data.spread(list(range(1, 10)))) == [1, 5, 3, 7, 2, 6, 4, 8, 9]


def test_a_batch_seen_again_gets_its_statistics_from_the_memo_and_only_then(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = {batch: ingest(layout, params_for(batch)) for batch in (1, 2, 3)}
    memos = sorted(layout.drift_memo.iterdir())
    assert len(memos) == 2  # batch 1 has no history to compare with
    for memo in memos:  # mark what is kept, to see it used
        memo.write_text(re.sub(r'"history_rows": \d+', '"history_rows": -1', memo.read_text()))
    again = ingest(layout, params_for(2))
    assert again["history_rows"] == -1 and {**again, "history_rows": first[2]["history_rows"]} == first[2]
    # the same batch kept out (as the refuse gate's second pass does) decides anew from the same statistics
    excluded = ingest(layout, params_for(3, exclude=(3,)))
    assert excluded["history_rows"] == -1 and excluded["decision"] == "excluded"
    # another history (batch 1 kept out) is another key: computed afresh
    assert ingest(layout, params_for(3, exclude=(1,)))["history_rows"] > 0


def test_an_excluded_batch_leaves_data_merged_as_the_batch_before(tmp_path: Path) -> None:
    excluded, before = Layout(tmp_path / "excluded"), Layout(tmp_path / "before")
    ingest(before, params_for(2))
    ingest(excluded, params_for(3))
    report = ingest(excluded, params_for(3, exclude=(3,)))
    assert report["decision"] == "excluded" and report["drifted"] is True
    assert folder_bytes(excluded.merged) == folder_bytes(before.merged)
    assert excluded.batch.exists()  # prepare_batch still writes it
    # and a later batch trains on everything but it; the manifest says which
    ingest(excluded, params_for(4, exclude=(3,)))
    assert [p.name for p in merge_data.partitions(excluded.merged)] == ["batch-00001.parquet", "batch-00002.parquet", "batch-00004.parquet"]
    assert read_json(excluded.merged / "_manifest.json")["excluded"] == [3]
    assert not (excluded.merged / "batch-00003.parquet").exists()
    with pytest.raises(IncrmlError, match="leaves out every batch up to 1"):
        ingest(Layout(tmp_path / "none"), params_for(1, exclude=(1,)))


def test_the_refuse_gate_fails_merge_data_leaving_the_history_alone(tmp_path: Path) -> None:
    refused, excluded = Layout(tmp_path / "refused"), Layout(tmp_path / "excluded")
    ingest(refused, params_for(2, gate="refuse"))
    with pytest.raises(DriftRefused) as caught:
        ingest(refused, params_for(3, gate="refuse"))
    assert caught.value.exit_code == 65
    assert "batch 3 drifted from the merged history: 4 of 8 features drifted" in str(caught.value)
    assert read_json(refused.drift)["decision"] == "refused"
    ingest(excluded, params_for(2, gate="refuse"))
    assert folder_bytes(refused.merged) == folder_bytes(excluded.merged)


def test_a_refusing_stage_exits_65_with_one_line_for_a_plain_dvc_repro(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    ingest(layout, params_for(2, gate="refuse"))
    text = (TEMPLATE_DIR / "params.yaml").read_text()
    text = text.replace("batch_number: 1", "batch_number: 3").replace("  gate: warn", "  gate: refuse")
    text = text.replace("    kind: digits\n", "".join(f"    {k}: {v}\n" for k, v in source().items()))
    (tmp_path / "params.yaml").write_text(text.replace("batch_size: 50", f"batch_size: {BATCH_SIZE}"))
    prepare_batch.prepare_batch(layout, load_params(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCRML_")}
    run = subprocess.run([sys.executable, "-m", "incrml.stages.merge_data"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 65
    assert run.stderr.startswith("Error: batch 3 drifted from the merged history") and run.stderr.count("\n") == 1
    assert "Add 3 to data.exclude in params.yaml" in run.stderr


# -- end to end: incrml over real DVC and MLflow ---------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _set(root: Path, old: str, new: str) -> None:
    path = root / "params.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_ingest_flags_drift_at_k_and_refuses_it_under_the_refuse_gate(cli, tmp_path: Path) -> None:
    """k = 3: batches 1, 2 pass, 3 is taken in with a warning; under refuse, 4 is refused and
    excluded with the model unchanged and DVC up to date; under warn again, 5 goes in."""
    root = tmp_path / "ws"
    assert cli("init", str(root)).exit_code == 0
    _set(root, "    kind: digits\n", "".join(f"    {k}: {v}\n" for k, v in source().items()))
    _set(root, "batch_size: 50", f"batch_size: {BATCH_SIZE}")
    layout = Layout(root)

    decisions = {}
    for batch in (1, 2, 3):
        result = cli("ingest-batch", str(batch), cwd=root)
        assert result.exit_code == 0, result.output
        decisions[batch] = read_json(layout.drift)
        assert ("Warning: batch 3 drifted: 4 of 8 features drifted" in result.stderr) == (batch == 3), result.stderr
    assert [decisions[b]["decision"] for b in (1, 2, 3)] == ["none", "ok", "warn"]
    assert [decisions[b]["drifted"] for b in (1, 2, 3)] == [False, False, True]

    _set(root, "  gate: warn", "  gate: refuse")
    model, rows = _md5(layout.model), read_json(layout.metrics)["training_rows"]
    result = cli("ingest-batch", "4", "--json", cwd=root)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Warning: batch 4 refused: 4 of 8 features drifted")
    assert "kept out of the history by data.exclude in params.yaml" in result.stderr
    assert result.stderr.count("\n") == 1
    params = load_params(root)
    assert (params.batch_number, params.data.exclude) == (4, [4])
    report = read_json(layout.drift)
    assert (report["batch"], report["decision"], report["drifted"]) == (4, "excluded", True)
    assert [p.name for p in merge_data.partitions(layout.merged)] == [f"batch-0000{b}.parquet" for b in (1, 2, 3)]
    assert not (layout.merged / "batch-00004.parquet").exists()
    assert _md5(layout.model) == model and read_json(layout.metrics)["training_rows"] == rows
    outcomes = {s["stage"]: s["outcome"] for s in json.loads(result.stdout)["stages"]}
    assert outcomes["train"] != "ran" and outcomes["merge_data"] == "ran"
    assert stale_stages(root) == {}

    _set(root, "  gate: refuse", "  gate: warn")
    result = cli("ingest-batch", "5", cwd=root)
    assert result.exit_code == 0, result.output
    assert load_params(root).data.exclude == [4]
    assert read_json(layout.drift)["decision"] == "warn"
    assert [p.name for p in merge_data.partitions(layout.merged)] == [f"batch-0000{b}.parquet" for b in (1, 2, 3, 5)]
    assert read_json(layout.metrics)["training_rows"] == 4 * BATCH_SIZE
    assert stale_stages(root) == {}
