"""docs/api.md's Python snippets run as written, in order, in an empty folder (the page promises it),
and ``from zerosearch import ...`` names exactly the public API."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_python_snippet_of_the_api_page_runs(tmp_path, monkeypatch, tiny_model):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6, "docs/api.md lost its snippets"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md snippet {i + 1}", "exec"), scope)
        except Exception as err:  # name the snippet that broke
            pytest.fail(f"docs/api.md snippet {i + 1} failed: {type(err).__name__}: {err}\n{block}")
    assert (tmp_path / "eval-bm25" / "results.json").exists()
    assert scope["gap"]["all"]["n"] == 2 and 0.0 <= scope["gap"]["all"]["agreement"] <= 1.0
    assert (tmp_path / "search-cache.sqlite").exists()


def test_the_package_exports_only_the_public_names():
    import zerosearch

    for name in zerosearch.__all__:
        assert getattr(zerosearch, name) is not None
    with pytest.raises(AttributeError, match="public names"):
        zerosearch.build_engine  # internal: reachable as zerosearch.engines.factory.build_engine


def test_importing_the_package_loads_no_heavy_module():
    import subprocess
    import sys

    code = "import sys, zerosearch; print(any(m in sys.modules for m in ('torch', 'transformers', 'trl')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sim_real_gap_joins_by_question_and_counts_agreement(tmp_path):
    import json

    from zerosearch.eval_gap import gap_table, sim_real_gap

    def run(name, preds, meta=None):
        folder = tmp_path / name
        (folder / "predictions").mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(meta or {"model": "m", "method": "search", "rollout": {}}))
        (folder / "predictions" / "nq.jsonl").write_text("".join(
            json.dumps({"id": i, "prediction": p, "golden_answers": ["Paris"]}) + "\n" for i, p in preds))
        return folder

    sim = run("sim", [("a", "Paris"), ("b", "paris."), ("c", None), ("d", "Rome"), ("e", "Paris")])
    real = run("real", [("a", "Paris"), ("b", "Lyon"), ("c", None), ("d", None)])
    gap = sim_real_gap(sim, real)["datasets"]["nq"]
    # shared a-d; sim right on a, b; real right on a; same answers: a, c (both missing)
    assert gap["n"] == 4 and gap["only_sim"] == 1 and gap["only_real"] == 0
    assert gap["em_sim"] == 0.5 and gap["em_real"] == 0.25 and gap["em_gap"] == 0.25
    assert gap["agreement"] == 0.5
    assert "| nq | 4 | 50.0 | 25.0 | +25.0 | 50.0 |" in gap_table(sim_real_gap(sim, real))
    other = run("other", [("a", "Paris")], {"model": "m2", "method": "search", "rollout": {}})
    with pytest.raises(ValueError, match="model"):
        sim_real_gap(sim, other)
