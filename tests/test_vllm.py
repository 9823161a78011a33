"""vLLM as the simulator and the policy back end, for real: a vLLM (CPU build) OpenAI server on a
loopback port serving the embedded SmolLM2, reached by ``zerosearch serve --backend-url`` (both
modes, the noisy guard through ``bad_words``, two servers with one crashing mid-run, a 504 past the
request timeout) and by ``zerosearch eval`` / ``ask --policy-url`` (the same rollouts as in
process under greedy decoding).

One vLLM server for the module (about 5 GB resident); the load-balancing test starts a second one
and crashes it. Skipped, with the reason, only where the vLLM venv is missing or failed to build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port, zerosearch_serve
from vllm_server import VLLMServer, vllm_python
from zerosearch.rewards import normalize_answer

pytestmark = pytest.mark.slow

MODEL = "embedded:smollm2-135m-instruct"
# Questions whose answer an unguarded small simulator writes into noisy documents; the gold answers
# are given in odd case and spacing on purpose (the guard must still ban the usual spellings).
GUARD_CASES = [("capital of France", "What is the capital of France?", ["paris"]),
               ("Origin of Species author", "Who wrote On the Origin of Species?", ["charles  darwin"]),
               ("highest mountain", "What is the highest mountain in the world?", ["MOUNT EVEREST"]),
               ("largest river South America", "Which river is the largest in South America?",
                ["the Amazon River"])]
FEW_SHOT = (  # raw-text demonstrations that make the untuned 135M model search and answer
    "Question: Who painted the Mona Lisa?\n<search> Mona Lisa painter </search>\n\n<information>"
    "Doc 1: (Title: Mona Lisa) The Mona Lisa was painted by Leonardo da Vinci.</information>\n\n"
    "<answer> Leonardo da Vinci </answer>\n\nQuestion: What is the capital of Japan?\n<search> "
    "capital of Japan </search>\n\n<information>Doc 1: (Title: Tokyo) Tokyo is the capital of "
    "Japan.</information>\n\n<answer> Tokyo </answer>\n\n")
QA = [("q0", "Which city is the capital of Germany?", ["Berlin"]),
      ("q1", "Who wrote On the Origin of Species?", ["Charles Darwin"]),
      ("q2", "What is the highest mountain?", ["Mount Everest"]),
      ("q3", "Which river is the largest in South America?", ["Amazon"])]


@pytest.fixture(scope="module")
def model_dir() -> str:
    from zerosearch.models import resolve_model

    return resolve_model(MODEL)


@pytest.fixture(scope="module")
def vllm_python_path() -> str:
    python, why = vllm_python()
    if python is None:
        pytest.skip(why)
    return python


@pytest.fixture(scope="module")
def vllm(vllm_python_path, model_dir, tmp_path_factory):
    server = VLLMServer(vllm_python_path, model_dir, free_port(),
                        tmp_path_factory.mktemp("vllm") / "server-a.log")
    yield server
    server.stop()


def _sim(vllm_urls, *flags):
    """``zerosearch serve`` over vLLM; unless the test sets them, attempts get 60 s and calls 180 s,
    and the service waits as long for a call (the 15 s and 60 s defaults are for GPU servers: a 2-core
    CPU vLLM serving 12 sampled 120-token requests at once can take longer, and a timeout here would
    test the machine, not the path)."""
    urls = [a for u in vllm_urls for a in ("--backend-url", f"{u}/v1")]
    patience = [] if "--timeout" in flags else ["--timeout", "60", "--deadline", "180",
                                                "--request-timeout", "190"]
    return zerosearch_serve("--engine", "simulated", *urls, "--seed", "0", *patience, *flags)


def _search(server, requests, timeout=300.0):
    return httpx.post(server.url + "/search", json={"requests": requests}, timeout=timeout)


def test_search_in_both_modes_through_vllm(vllm):
    server = _sim([vllm.url], "--temperature", "0", "--max-new-tokens", "96")
    try:
        reqs = [{"query": "capital of France", "question": "What is the capital of France?",
                 "golden_answers": ["Paris"], "mode": mode, "topk": 3} for mode in ("useful", "noisy")]
        response = _search(server, reqs)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["mode"] for r in results] == ["useful", "noisy"]
        for r in results:
            assert r["error"] is None and 1 <= len(r["documents"]) <= 3, r
            assert all(d["text"].strip() for d in r["documents"])
        assert results[0]["documents"] != results[1]["documents"]  # the two prompts differ
        # the Search-R1 /retrieve call through the same back end
        retrieved = httpx.post(server.url + "/retrieve", json={
            "queries": ["capital of France"], "topk": 2, "questions": ["What is the capital of France?"],
            "golden_answers": [["Paris"]], "mode": "useful"}, timeout=300)
        assert retrieved.status_code == 200 and retrieved.json()["result"][0], retrieved.text
    finally:
        server.kill()


def _leaks(results, requests) -> int:
    """Noisy results whose documents hold a gold answer as whole words (as answer matching reads
    them: lower case, no punctuation or articles, runs of spaces as one)."""
    count = 0
    for request, result in zip(requests, results):
        text = f" {normalize_answer(' '.join(d['text'] for d in result['documents']))} "
        count += any(f" {normalize_answer(a)} " in text for a in request["golden_answers"])
    return count


def test_noisy_guard_through_bad_words(vllm):
    """Sampled noisy documents spell the answer without the guard and never with it, whatever the
    case and spacing of the gold answer (every surface form goes over HTTP as ``bad_words``)."""
    reqs = [{"query": q, "question": question, "golden_answers": answers, "mode": "noisy", "topk": 3}
            for q, question, answers in GUARD_CASES] * 3
    counts = {}
    for guard in ("--no-noisy-guard", "--noisy-guard"):
        server = _sim([vllm.url], "--temperature", "1.0", "--max-new-tokens", "120", guard)
        try:
            response = _search(server, reqs)
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert all(r["error"] is None for r in results), [r["error"] for r in results]
            counts[guard] = _leaks(results, reqs)
        finally:
            server.kill()
    assert counts["--no-noisy-guard"] >= 1, counts  # the guard has something to stop
    assert counts["--noisy-guard"] == 0, counts


def test_a_request_past_its_timeout_gets_504(vllm):
    server = _sim([vllm.url], "--temperature", "0", "--max-new-tokens", "600",
                  "--request-timeout", "2")
    try:
        started = time.monotonic()
        response = _search(server, [{"query": "history of Paris", "question": "Tell me about Paris.",
                                     "golden_answers": ["Paris"], "mode": "useful", "topk": 5}],
                           timeout=60)
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert "2.0s" in response.json()["error"] and elapsed < 15
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    finally:
        server.kill()


def test_load_balancing_over_two_servers_with_one_crashing(vllm, vllm_python_path, model_dir, tmp_path):
    """Both servers take requests; after one is killed mid-run the other serves everything, every
    call still succeeds within its bounds, and the dead one is tried again only after the
    cool-down (a few retried calls spread over time, not a retry on every call)."""
    # vLLM's automatic binding puts the shared server's engine threads on the first cores and leaves
    # the last one to the schedulers; this one's go on the last core, so neither starves the other
    # (both automatic: on 2 cores both on core 0, and one served nothing for minutes)
    cpus = os.sched_getaffinity(0)
    second = VLLMServer(vllm_python_path, model_dir, free_port(), tmp_path / "server-b.log",
                        omp_cpus=str(max(cpus)) if len(cpus) > 1 else None)
    server = None
    try:
        server = _sim([vllm.url, second.url], "--temperature", "0", "--max-new-tokens", "24",
                      "--timeout", "60", "--max-retries", "3")
        before = (vllm.served_requests(), second.served_requests())
        calls: list[dict] = []
        lock = threading.Lock()
        stop_at = [time.monotonic() + 600.0]

        def worker(i: int) -> None:
            n = 0
            with httpx.Client(timeout=120) as client:
                while time.monotonic() < stop_at[0]:
                    started = time.monotonic()
                    req = {"query": f"topic {i}-{n}", "question": f"What is topic {i}-{n}?",
                           "golden_answers": ["x"], "mode": "useful", "topk": 2}
                    n += 1
                    try:
                        response = client.post(server.url + "/search", json={"requests": [req]})
                        result = response.json()["results"][0] if response.status_code == 200 else None
                        status = response.status_code
                    except httpx.HTTPError as err:
                        result, status = None, repr(err)
                    with lock:
                        calls.append({"start": started, "end": time.monotonic(), "status": status,
                                      "result": result})

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        served_a = served_b = 0
        # at least 12 calls, and until both servers have taken some (or the deadline: then it fails)
        while time.monotonic() < deadline and (len(calls) < 12 or not (served_a and served_b)):
            time.sleep(1.0)
            served_a = vllm.served_requests() - before[0]
            served_b = second.served_requests() - before[1]
        killed_at = time.monotonic()
        second.crash()
        stop_at[0] = killed_at + 30.0  # six cool-downs of 5 s after the crash
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert served_a > 0 and served_b > 0, (served_a, served_b)  # both took load before
        assert all(c["status"] == 200 for c in calls), [c["status"] for c in calls if c["status"] != 200]
        assert all(c["result"]["error"] is None for c in calls), [
            c["result"]["error"] for c in calls if c["result"]["error"]]
        assert max(c["end"] - c["start"] for c in calls) < 60
        after = [c for c in calls if c["start"] > killed_at + 0.5]
        assert len(after) >= 8
        retried = sorted(c["start"] for c in after if c["result"]["retries"] > 0)
        # the dead server is picked again each time its cool-down (5 s) ends: retried calls come
        # in bursts at least a cool-down apart, and most calls in between go straight to the live one
        bursts = [t for i, t in enumerate(retried) if i == 0 or t - retried[i - 1] > 2.0]
        assert len(bursts) >= 2, retried
        assert all(b - a >= 4.0 for a, b in zip(bursts, bursts[1:])), bursts
        assert len(retried) < len(after) / 2, (len(retried), len(after))
    finally:
        if server is not None:
            server.kill()
        second.stop()


# -- the policy behind the endpoint -------------------------------------------------------------
@pytest.fixture()
def qa_folder(tmp_path) -> Path:
    folder = tmp_path / "qa" / "tiny"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(
        json.dumps({"id": i, "question": q, "golden_answers": a}) + "\n" for i, q, a in QA))
    return folder.parent


def _predictions(out_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "predictions" / "tiny.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("id", "prediction", "response", "stats")} for r in rows]


def test_policy_endpoint_rollouts_equal_the_in_process_ones(vllm, tiny_corpus):
    """Greedy multi-turn rollouts (searches, information blocks, answers) token for token: the
    policy served by vLLM (fp32) and the same model in process (fp32)."""
    from zerosearch.engines.factory import EngineConfig, build_engine
    from zerosearch.generation.hf import load_policy
    from zerosearch.generation.endpoint import EndpointConfig, load_policy_endpoint
    from zerosearch.rollout import RolloutConfig, Row, run_rollouts

    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus), topk=2))
    rows = [Row(q, a, i) for i, q, a in QA]
    cfg = RolloutConfig(max_turns=1, max_turn_tokens=40, temperature=0.0, chat_template="no",
                        instruction=FEW_SHOT)
    remote, tok = load_policy_endpoint(MODEL, EndpointConfig(urls=[f"{vllm.url}/v1"]))
    local, local_tok = load_policy(MODEL, "cpu", "float32")
    try:
        served = run_rollouts(rows, remote, tok, engine, cfg, eos_token_ids=[tok.eos_token_id])
        in_process = run_rollouts(rows, local, local_tok, engine, cfg,
                                  eos_token_ids=[local_tok.eos_token_id])
    finally:
        remote.close()
    assert sum(t.searches for t in served) >= 3  # the comparison covers searches and insertions
    for a, b in zip(served, in_process):
        assert a.prompt_ids == b.prompt_ids
        assert a.completion_ids == b.completion_ids, (a.response, b.response)
        assert a.env_mask == b.env_mask and a.answer == b.answer and a.stats() == b.stats()
    assert remote.describe()["retokenised"] == 0  # vLLM returned the token ids


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerosearch.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_eval_and_ask_with_the_policy_behind_vllm(vllm, tiny_corpus, qa_folder, tmp_path):
    """``zerosearch eval --policy-url`` writes the predictions an in-process evaluation writes
    (greedy, fp32 on both sides); ``ask --policy-url`` answers through the same rollout."""
    from zerosearch.evaluate import EvalConfig, evaluate
    from zerosearch.engines.factory import EngineConfig, build_engine
    from zerosearch.generation.hf import load_policy
    from zerosearch.rollout import RolloutConfig

    engine_flags = ["--engine", "bm25", "--corpus", str(tiny_corpus), "--topk", "2"]
    served = tmp_path / "served"
    done = _cli("eval", "-m", MODEL, "--policy-url", f"{vllm.url}/v1", "--datasets", "tiny",
                "--data-dir", str(qa_folder), "-o", str(served), "--max-turns", "1",
                "--max-turn-tokens", "32", "--limit", "3", *engine_flags)
    assert done.returncode == 0, done.stdout + done.stderr
    generator, tokenizer = load_policy(MODEL, "cpu", "float32")
    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tiny_corpus), topk=2))
    cfg = EvalConfig(model=MODEL, datasets=["tiny"], data_dir=str(qa_folder), limit=3,
                     rollout=RolloutConfig(max_turns=1, max_turn_tokens=32, temperature=0.0, topk=2))
    evaluate(cfg, generator, tokenizer, engine, tmp_path / "local")
    assert _predictions(served) == _predictions(tmp_path / "local")

    asked = _cli("ask", "Who wrote On the Origin of Species?", "-m", MODEL, "--policy-url",
                 f"{vllm.url}/v1", "--max-turns", "1", "--max-turn-tokens", "32", "--json",
                 *engine_flags)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    trace = json.loads(asked.stdout)
    assert trace["trace"][0]["type"] == "generation" and trace["turns"] >= 1
    dead = _cli("ask", "Who?", "-m", MODEL, "--policy-url", f"http://127.0.0.1:{free_port()}/v1",
                *engine_flags)
    assert dead.returncode != 0 and "cannot list the models served" in dead.stderr
