"""The search service as users run it: `zerosearch serve` processes on loopback ports.

BM25 over the shared corpus (with a bearer token), the simulated engine with the tiny model in
process, and the simulated engine behind a real `transformers serve` back end that we then kill
(503) or replace by a port that never answers (504).
"""

import socket
import sys
import time

import httpx
import pytest

from conftest import Server, free_port, zerosearch_serve
from zerosearch.engines import EngineConfig, SearchRequest, build_engine

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bm25_server(shared_corpus, tmp_path_factory):
    server = zerosearch_serve("--engine", "bm25", "--corpus", str(shared_corpus), "--token", TOKEN,
                              "--index-path", str(tmp_path_factory.mktemp("idx")), "--max-batch", "8")
    yield server
    server.kill()


def test_search_and_health(bm25_server):
    body = {"requests": [{"query": "On the Origin of Species author", "topk": 3, "row_id": "r1"},
                         {"query": "capital of France", "topk": 2}]}
    r = httpx.post(bm25_server.url + "/search", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["documents"]) for x in results] == [3, 2]
    assert results[0]["row_id"] == "r1" and results[0]["engine"] == "bm25"
    assert any("Darwin" in d["text"] for d in results[0]["documents"])
    health = httpx.get(bm25_server.url + "/health").json()  # no token needed
    assert health["status"] == "ok" and health["passages"] > 30000


def test_retrieve_speaks_the_search_r1_api(bm25_server):
    r = httpx.post(bm25_server.url + "/retrieve", headers=AUTH, timeout=30, json={
        "queries": ["capital of France", "Charles Darwin"], "topk": 3, "return_scores": True})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert len(result) == 2 and len(result[0]) == 3
    first = result[0][0]
    assert set(first) == {"document", "score"} and set(first["document"]) == {"id", "contents"}
    assert first["document"]["contents"].startswith('"') and first["score"] > 0
    plain = httpx.post(bm25_server.url + "/retrieve", headers=AUTH, json={
        "queries": ["capital of France"], "topk": 2}).json()["result"]
    assert set(plain[0][0]) == {"id", "contents"}


@pytest.mark.parametrize("payload,status,message", [
    (b'{"requests": [', 422, "JSON"),
    (b'{"requests": [{"query": ""}]}', 422, "query is empty"),
    (b'{"requests": [{"query": "   "}]}', 422, "query is empty"),
    (b'{"requests": [{"query": "' + b"x" * 3000 + b'"}]}', 422, "limit is 2000"),
    (b'{"requests": [{"query": 5}]}', 422, "requests.0.query"),
    (b'{"requests": [{"query": "q", "topk": "5"}]}', 422, "topk"),
    (b'{"requests": [{"query": "q", "topk": 500}]}', 422, "topk must be between"),
    (b'{"requests": [{"query": "q", "mode": "random"}]}', 422, "mode"),
    (b'{"requests": [{"query": "q", "noise_prob": 2}]}', 422, "noise_prob"),
    (b'{"requests": []}', 422, "no queries"),
    (b'{"requests": [' + b",".join([b'{"query": "q"}'] * 9) + b"]}", 413, "limit is 8"),
    (b'{"requests": [{"query": "\xff\xfe"}]}', 400, "UTF-8"),
    (b'{"queries": ["q"]}', 422, "requests"),
])
def test_bad_input_gets_a_4xx_with_a_message(bm25_server, payload, status, message):
    r = httpx.post(bm25_server.url + "/search", content=payload, timeout=30,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_token_is_required_and_metrics_count(bm25_server):
    r = httpx.post(bm25_server.url + "/search", json={"requests": [{"query": "q"}]})
    assert r.status_code == 401 and "token" in r.json()["error"]
    r = httpx.post(bm25_server.url + "/search", json={"requests": [{"query": "q"}]},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.post(bm25_server.url + "/retrieve", headers=AUTH,
                   json={"queries": ["a", "b"], "questions": ["only one"]})
    assert r.status_code == 422 and "questions has 1 entries for 2 queries" in r.json()["error"]
    text = httpx.get(bm25_server.url + "/metrics", headers=AUTH).text
    assert 'zerosearch_http_requests_total{endpoint="/search",status="200"}' in text
    assert 'zerosearch_queries_total{mode="real"}' in text
    assert "zerosearch_http_latency_seconds_bucket" in text


def test_remote_engine_talks_to_a_zerosearch_server(bm25_server):
    engine = build_engine(EngineConfig(kind="remote", remote_url=bm25_server.url, api_key=TOKEN))
    [result] = engine.search([SearchRequest("capital of France", topk=2, row_id=3)])
    assert result.ok and len(result.documents) == 2 and result.row_id == 3
    bad = build_engine(EngineConfig(kind="remote", remote_url=bm25_server.url, api_key="wrong"))
    assert bad.search([SearchRequest("q")])[0].error_kind == "bad_request"


def test_simulated_engine_served_in_process(tiny_model):
    server = zerosearch_serve("--engine", "simulated", "--model", "embedded:tiny-random",
                              "--max-new-tokens", "16", "--seed", "0")
    try:
        body = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"],
                              "mode": "noisy", "topk": 2},
                             {"query": "q2", "noise_prob": 0.0, "topk": 2}]}
        r = httpx.post(server.url + "/search", json=body, timeout=120)
        assert r.status_code in (200, 503), r.text  # a random model may write no documents at all
        if r.status_code == 200:
            assert [x["mode"] for x in r.json()["results"]] == ["noisy", "useful"]
        health = httpx.get(server.url + "/health").json()
        assert health["engine"] == "simulated" and health["backend"] == "transformers"
    finally:
        server.kill()


def test_killed_backend_gives_503_and_silent_backend_504(tiny_model):
    backend_port = free_port()
    backend = Server([sys.executable, "-m", "transformers.cli.transformers", "serve", tiny_model,
                      "--port", str(backend_port), "--device", "cpu"], backend_port,
                     env={"HF_HUB_OFFLINE": "1"})
    server = zerosearch_serve("--engine", "simulated", "--backend-url",
                              f"http://127.0.0.1:{backend_port}/v1", "--backend-model", tiny_model,
                              "--max-new-tokens", "16", "--timeout", "5", "--max-retries", "1")
    body = {"requests": [{"query": "q", "question": "Q?", "golden_answers": ["A"], "topk": 2}]}
    try:
        r = httpx.post(server.url + "/search", json=body, timeout=60)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 503:  # the back end answered, but the random model wrote nothing usable
            assert "no documents" in r.json()["error"]
        backend.kill()
        started = time.monotonic()
        r = httpx.post(server.url + "/search", json=body, timeout=60)
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        assert time.monotonic() - started < 10
        r = httpx.post(server.url + "/retrieve", json={"queries": ["q"]}, timeout=60)
        assert r.status_code == 503
    finally:
        backend.kill()
        server.kill()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    server = zerosearch_serve("--engine", "simulated", "--backend-url",
                              f"http://127.0.0.1:{silent.getsockname()[1]}", "--backend-model", "m",
                              "--timeout", "1", "--max-retries", "1")
    try:
        started = time.monotonic()
        r = httpx.post(server.url + "/search", json=body, timeout=60)
        assert r.status_code == 504 and "timed out" in r.json()["error"]
        assert time.monotonic() - started < 8
    finally:
        server.kill()
        silent.close()
