"""Evaluation with the tiny model: every method on two datasets, resume after a kill, the files,
and clear errors for bad dataset names."""

import json
import subprocess
import sys

import pytest

from zerosearch.evaluate import EvalConfig, compare, evaluate, resolve_dataset, rouge_l
from zerosearch.jsonl import read_finished
from zerosearch.rollout import RolloutConfig


@pytest.fixture(scope="module")
def policy(tiny_model):
    from zerosearch.generation.hf import load_policy

    return load_policy("embedded:tiny-random", "cpu")


@pytest.fixture()
def data_dir(tmp_path):
    for name, rows in {"alpha": [("Which city is the capital of Germany?", ["Berlin"]),
                                 ("Who wrote On the Origin of Species?", ["Charles Darwin"]),
                                 ("What is the highest mountain?", ["Mount Everest"])],
                       "beta": [("Which river is the largest in South America?", ["Amazon"]),
                                ("What is the capital of France?", ["Paris"])]}.items():
        (tmp_path / "qa" / name).mkdir(parents=True)
        (tmp_path / "qa" / name / "test.jsonl").write_text("".join(
            json.dumps({"id": f"{name}{i}", "question": q, "golden_answers": a}) + "\n"
            for i, (q, a) in enumerate(rows)))
    return tmp_path / "qa"


def _cfg(data_dir, method, **kw):
    return EvalConfig(model="embedded:tiny-random", method=method, datasets=["alpha", "beta"],
                      data_dir=str(data_dir), batch_size=2,
                      rollout=RolloutConfig(max_turns=1, max_turn_tokens=8, temperature=0.0, topk=2),
                      **kw)


@pytest.mark.parametrize("method", ["search", "direct", "cot", "rag"])
def test_every_method_on_two_datasets(policy, data_dir, tiny_corpus, tmp_path, method):
    from zerosearch.engines import EngineConfig, build_engine

    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus), topk=2), log=lambda m: None)
    generator, tok = policy
    out = tmp_path / f"out-{method}"
    report = evaluate(_cfg(data_dir, method), generator, tok, engine, out)
    assert set(report["datasets"]) == {"alpha", "beta"}
    assert report["datasets"]["alpha"]["n"] == 3 and report["datasets"]["beta"]["n"] == 2
    preds = [json.loads(l) for l in open(out / "predictions" / "alpha.jsonl")]
    assert [p["id"] for p in preds] == ["alpha0", "alpha1", "alpha2"]
    # the files hold the computed numbers: results.json == mean of per-row metrics
    em = sum(p["metrics"]["em"] for p in preds) / 3
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"]["alpha"]["em"] == pytest.approx(em)
    fails = sum(p["metrics"]["extraction_failure"] for p in preds) / 3
    assert results["datasets"]["alpha"]["extraction_failure"] == pytest.approx(fails)
    table = (out / "table.md").read_text()
    assert f"{100 * results['average']['em']:.1f}" in table and "| Method | alpha | beta | Avg. |" in table
    assert (out / "chart.png").stat().st_size > 1000
    if method in ("direct", "cot"):
        assert all(p["stats"]["searches"] == 0 for p in preds)


def test_resume_after_a_kill_loses_and_duplicates_nothing(policy, data_dir, tmp_path):
    generator, tok = policy
    out = tmp_path / "out"
    full = evaluate(_cfg(data_dir, "direct"), generator, tok, None, tmp_path / "reference")
    evaluate(_cfg(data_dir, "direct", limit=1), generator, tok, None, out)  # an interrupted run...
    path = out / "predictions" / "alpha.jsonl"
    with open(path, "a") as f:
        f.write('{"id": "alpha1", "question": "half a li')  # ...killed mid-write
    assert len(read_finished(path)) == 1 and path.read_text().endswith("\n")
    resumed = evaluate(_cfg(data_dir, "direct"), generator, tok, None, out)
    ids = [json.loads(l)["id"] for l in open(path)]
    assert ids == ["alpha0", "alpha1", "alpha2"]
    assert resumed["datasets"] == full["datasets"]  # greedy: the same numbers as one uninterrupted run
    with pytest.raises(ValueError, match="different method"):
        evaluate(_cfg(data_dir, "cot"), generator, tok, None, out)


def test_batches_pool_the_datasets_and_change_no_prediction(policy, data_dir, tiny_corpus, tmp_path,
                                                            monkeypatch):
    import zerosearch.evaluate as ev
    from zerosearch.engines import EngineConfig, build_engine

    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus), topk=2), log=lambda m: None)
    generator, tok = policy
    batches = []
    real = ev.run_rollouts
    monkeypatch.setattr(ev, "run_rollouts", lambda rows, *a, **k: batches.append(
        [r.id for r in rows]) or real(rows, *a, **k))
    pooled = evaluate(_cfg(data_dir, "search"), generator, tok, engine, tmp_path / "pooled")
    assert batches == [["alpha0", "alpha1"], ["alpha2", "beta0"], ["beta1"]]
    batches.clear()
    alone = evaluate(_cfg(data_dir, "search", pool_datasets=False), generator, tok, engine,
                     tmp_path / "alone")
    assert batches == [["alpha0", "alpha1"], ["alpha2"], ["beta0", "beta1"]]
    for name in ("alpha", "beta"):
        a, b = (read_finished(tmp_path / run / "predictions" / f"{name}.jsonl")
                for run in ("pooled", "alone"))
        assert [(r["id"], r["response"]) for r in a] == [(r["id"], r["response"]) for r in b]
    assert pooled["datasets"] == alone["datasets"]
    # a folder written before pooling existed ran per dataset: resuming it pooled would mix the two
    meta = json.loads((tmp_path / "alone" / "run.json").read_text())
    del meta["pool_datasets"]
    (tmp_path / "alone" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="different pool_datasets"):
        evaluate(_cfg(data_dir, "search"), generator, tok, engine, tmp_path / "alone")
    # ...but a single dataset was never pooled: its old folder resumes
    one = _cfg(data_dir, "search", pool_datasets=False)
    one.datasets = ["alpha"]
    evaluate(one, generator, tok, engine, tmp_path / "one")
    meta = json.loads((tmp_path / "one" / "run.json").read_text())
    del meta["pool_datasets"]
    (tmp_path / "one" / "run.json").write_text(json.dumps(meta))
    one.pool_datasets = True
    assert evaluate(one, generator, tok, engine, tmp_path / "one")["datasets"]["alpha"]["n"] == 3


def test_two_files_with_one_name_are_refused(policy, data_dir, tmp_path):
    generator, tok = policy
    cfg = _cfg(data_dir, "direct")
    cfg.datasets = [str(data_dir / "alpha" / "test.jsonl"), str(data_dir / "beta" / "test.jsonl")]
    with pytest.raises(ValueError, match="would share predictions/test.jsonl"):
        evaluate(cfg, generator, tok, None, tmp_path / "out")


def test_compare_merges_runs(policy, data_dir, tmp_path):
    generator, tok = policy
    a = evaluate(_cfg(data_dir, "direct", label="direct"), generator, tok, None, tmp_path / "a")
    evaluate(_cfg(data_dir, "cot", label="cot"), generator, tok, None, tmp_path / "b")
    table = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert "| direct |" in table and "| cot |" in table
    assert f"{100 * a['average']['em']:.1f}" in table
    assert (tmp_path / "merged" / "chart.png").exists()


def test_a_dataset_name_without_a_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="pass --data-dir FOLDER"):
        resolve_dataset("nq", None, "test")


def test_bad_dataset_names_list_what_exists(data_dir):
    with pytest.raises(FileNotFoundError, match="alpha, beta"):
        resolve_dataset("gamma", data_dir, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset("nq", data_dir / "nowhere", "test")


def test_rouge_l():
    # pred [city, of, new, york] vs gold [new, york, city]: LCS "new york" = 2, P = 2/4, R = 2/3
    assert rouge_l("the city of new york", ["New York City"]) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert rouge_l(None, ["x"]) == 0.0


def test_eval_cli_errors_and_run(data_dir, tmp_path):
    base = [sys.executable, "-m", "zerosearch.cli", "eval"]
    r = subprocess.run(base + ["--model", "embedded:tiny-random", "--datasets", "alpha,nope",
                               "--data-dir", str(data_dir), "-o", str(tmp_path / "o"),
                               "--method", "direct"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown dataset 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["--model", "embedded:tiny-random", "--datasets", "alpha",
                               "--data-dir", str(data_dir), "-o", str(tmp_path / "o"),
                               "--method", "direct", "--max-turn-tokens", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| alpha | Avg. |" in r.stdout
    r = subprocess.run(base + ["compare", str(tmp_path / "o"), str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "results.json not found" in r.stderr


def test_rag_puts_the_retrieved_documents_in_the_prompt(tiny_corpus):
    from zerosearch.engines import EngineConfig, build_engine
    from zerosearch.evaluate import rag_instructions
    from zerosearch.rollout import Row

    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus)), log=lambda m: None)
    [instruction] = rag_instructions([Row("Which city is the capital of Germany?", ["Berlin"])], engine, 2)
    assert "<information>Doc 1: (Title: Berlin) Berlin is the capital of Germany" in instruction
    assert instruction.endswith("</information>\n\n")


def test_ask_shows_the_trace_and_json(tiny_corpus):
    base = [sys.executable, "-m", "zerosearch.cli", "ask", "Which city is the capital of Germany?",
            "--model", "embedded:tiny-random", "--engine", "bm25", "--corpus", str(tiny_corpus),
            "--max-turns", "1", "--max-turn-tokens", "8", "--device", "cpu"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "▸ generation" in r.stdout and "answer:" in r.stdout
    r = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=300)
    data = json.loads(r.stdout)
    assert data["question"] == "Which city is the capital of Germany?"
    assert data["trace"][0]["type"] == "generation" and "turns" in data


def test_lenient_response_match_is_kept_apart_from_em():
    from zerosearch.evaluate import record_metrics

    record = {"golden_answers": ["Paris"], "prediction": None, "response": "I think it is Paris.",
              "stats": {"searches": 0, "turns": 1}}
    m = record_metrics(record)
    assert (m["em"], m["cover_em"], m["f1"], m["extraction_failure"]) == (0.0, 0.0, 0.0, 1.0)
    assert m["response_cover_em"] == 1.0


def test_eval_seed_controls_sampling(policy, data_dir, tmp_path):
    generator, tok = policy

    def responses(seed, out):
        cfg = EvalConfig(model="embedded:tiny-random", method="direct", datasets=["alpha"],
                         data_dir=str(data_dir), batch_size=2, seed=seed,
                         rollout=RolloutConfig(max_turns=0, max_turn_tokens=8, temperature=1.0))
        evaluate(cfg, generator, tok, None, tmp_path / out)
        return [json.loads(line)["response"] for line in open(tmp_path / out / "predictions" / "alpha.jsonl")]

    assert responses(1, "a") == responses(1, "b")
    assert responses(1, "a") != responses(2, "c")
