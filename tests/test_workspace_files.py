"""The checkout's own workspace and the template `incrml init` copies cannot drift apart."""

from __future__ import annotations

from conftest import REPO
from ruamel.yaml import YAML

from incrml.pipeline import STAGES
from incrml.workspace import TEMPLATE_DIR, Layout, files_dvc_yaml


def _load(path):
    return YAML(typ="safe").load(path.read_text())


def test_root_dvc_yaml_is_the_template_plus_each_stages_code_files():
    root, template = _load(REPO / "dvc.yaml"), _load(TEMPLATE_DIR / "dvc.yaml")
    assert list(root["stages"]) == list(template["stages"]) == list(STAGES)
    for name, stage in root["stages"].items():
        code = [d for d in stage["deps"] if str(d).startswith("incrml/")]
        assert f"incrml/stages/{name}.py" in code, name
        assert all((REPO / d).is_file() for d in code), name
        assert {**stage, "deps": [d for d in stage["deps"] if d not in code]} == template["stages"][name]
    assert root["plots"] == template["plots"]


def test_root_params_yaml_is_the_template():
    assert (REPO / "params.yaml").read_text() == (TEMPLATE_DIR / "params.yaml").read_text()


def test_dvc_yaml_declares_the_paths_the_stages_write():
    stages = _load(TEMPLATE_DIR / "dvc.yaml")["stages"]
    declared = set()
    for stage in stages.values():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            declared.add(next(iter(out)) if isinstance(out, dict) else out)
    layout = Layout(REPO)
    written = {layout.stream, layout.holdout, layout.schema, layout.batch, layout.batch_stats, layout.merged,
               layout.preprocessor, layout.model, layout.metrics, layout.run_record, layout.drift}
    assert {str(p.relative_to(REPO)) for p in written} == declared


def test_files_dvc_yaml_is_the_template_reading_batch_files():
    """A files workspace's stages differ only where batches come from: file 1, or the batches folder."""
    template = _load(TEMPLATE_DIR / "dvc.yaml")
    files = YAML(typ="safe").load(files_dvc_yaml((TEMPLATE_DIR / "dvc.yaml").read_text()))
    layout = Layout(REPO)
    first, folder = (str(p.relative_to(REPO)) for p in (layout.batch_file(1), layout.batch_files))
    expected = template["stages"]
    expected["get_data"]["deps"] = [first]
    for name in ("prepare_batch", "merge_data"):
        deps = expected[name]["deps"]
        deps.insert(deps.index("data/raw/schema.json") + 1, folder)
        expected[name]["params"].remove("data.batch_size")
    assert files["stages"] == expected
    assert files["plots"] == template["plots"]
