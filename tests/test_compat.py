"""Unchanged upstream clients against a real `zerosearch serve` on a loopback port.

The Search-R1 client (search_r1/llm_agent/generation.py) posts ``{"queries", "topk",
"return_scores": true}`` once per turn: ``"queries": []`` on a turn where no row searched, empty
query strings, up to 512 x 5 = 2,560 queries, ``topk`` possibly null; it then writes
``Doc i(Title: …) …`` lines from each ``contents``. ZeroSearch's local-retrieval client posts
``{"query": …, "top_k": k}`` and reads a list of ``{"text": …}``. Both are replayed here, against
BM25 over a small corpus (an empty title line, doubled spaces) and against the simulated engine
with the tiny model in process.
"""

import json

import httpx
import pytest

from conftest import zerosearch_serve
from zerosearch.protocol import search_r1_documents

ROWS = [
    ("p1", '"Paris"\nParis is the capital and  largest city of France.'),
    ("p2", '"Berlin"\nBerlin is the capital of Germany.'),
    ("p3", '"Charles Darwin"\nCharles Darwin wrote On the Origin of Species in 1859.'),
    ("p4", '\nLyon is a French city on the Rhone, an empty title line above it.'),
    ("p5", '"Everest"\nMount Everest is the highest mountain.\nIt lies in the Himalaya.'),
]
CONTENTS = dict(ROWS)


@pytest.fixture(scope="module")
def bm25(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compat")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in ROWS))
    server = zerosearch_serve("--engine", "bm25", "--corpus", str(corpus), "--topk", "3",
                              "--index-path", str(folder / "idx"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def simulated(tiny_model):
    server = zerosearch_serve("--engine", "simulated", "--model", "embedded:tiny-random",
                              "--max-new-tokens", "8", "--max-batch-size", "512", "--seed", "0",
                              "--topk", "2", "--noise-prob", "0.0", "--request-timeout", "300")
    yield server
    server.kill()


def _post(server, body, timeout=300):
    return httpx.post(server.url + "/retrieve", json=body, timeout=timeout)


def _replay_search_r1(server, big: int = 2560) -> list[list[dict]]:
    """The Search-R1 client's calls over one multi-turn batch; returns the first turn's result.
    ``big``: the size of the large batch (Search-R1's GRPO default, 512 prompts x 5 samples, by
    default)."""
    first = _post(server, {"queries": ["capital of France", "", "Origin of Species",
                                       "Lyon French city"], "topk": 3, "return_scores": True})
    assert first.status_code == 200, first.text
    result = first.json()["result"]
    assert len(result) == 4 and result[1] == []  # the empty query: an empty slot, not a 4xx
    for docs in (result[0], result[2], result[3]):
        assert docs and all(set(d) == {"document", "score"} for d in docs)
    # a turn on which no row searched
    empty = _post(server, {"queries": [], "topk": 3, "return_scores": True})
    assert empty.status_code == 200 and empty.json() == {"result": []}
    # topk null (and absent): the server default
    null = _post(server, {"queries": ["Berlin Germany"], "topk": None, "return_scores": True})
    assert null.status_code == 200, null.text
    absent = _post(server, {"queries": ["Berlin Germany"]})
    assert absent.status_code == 200 and len(absent.json()["result"]) == 1
    # a large batch: Search-R1's GRPO default, 512 prompts x 5 samples, unless told otherwise
    large = _post(server, {"queries": [f"capital city number {i}" for i in range(big)], "topk": 3,
                           "return_scores": True})
    assert large.status_code == 200, large.text
    assert len(large.json()["result"]) == big
    # return_scores as 0/1
    for flag, keys in ((1, {"document", "score"}), (0, {"id", "contents"})):
        r = _post(server, {"queries": ["capital of France"], "topk": 1, "return_scores": flag})
        assert r.status_code == 200 and set(r.json()["result"][0][0]) == keys
    return result


def _assert_really_wrong_values_are_4xx(server):
    for body, field in (({"queries": ["q"], "topk": -1}, "topk"), ({"queries": ["q"], "topk": "3"}, "topk"),
                        ({"queries": ["q"], "return_scores": "yes"}, "return_scores"),
                        ({"queries": ["q"], "return_scores": 2}, "return_scores"),
                        ({"queries": "q"}, "queries"), ({"query": 5, "top_k": 1}, "query")):
        r = _post(server, body)
        assert 400 <= r.status_code < 500 and field in r.json()["error"], (body, r.text)


def test_search_r1_client_against_bm25(bm25):
    result = _replay_search_r1(bm25)
    # contents byte for byte the corpus row's, the empty title line and doubled spaces included
    for docs in result:
        for d in docs:
            assert d["document"]["contents"] == CONTENTS[d["document"]["id"]]
    lyon = next(d for d in result[3] if d["document"]["id"] == "p4")
    assert lyon["document"]["contents"].startswith("\nLyon")
    # what the Search-R1 client then writes for the policy
    paris = search_r1_documents([d["document"]["contents"] for d in result[0][:1]])
    assert paris == 'Doc 1(Title: "Paris") Paris is the capital and  largest city of France.'
    _assert_really_wrong_values_are_4xx(bm25)
    metrics = httpx.get(bm25.url + "/metrics").text
    assert "zerosearch_empty_queries_total 1.0" in metrics
    assert "zerosearch_retrieve_without_context_total 0.0" in metrics  # BM25 needs no context


def test_zerosearch_local_retrieval_client_against_bm25(bm25):
    r = _post(bm25, {"query": "capital of France", "top_k": 2})
    assert r.status_code == 200, r.text
    docs = r.json()
    assert isinstance(docs, list) and len(docs) == 2
    assert docs[0]["text"] == "Paris is the capital and  largest city of France."
    assert docs[0]["contents"] == CONTENTS["p1"] and docs[0]["title"] == "Paris"
    # what ZeroSearch's client then writes: "Doc i: {text}"
    assert "\n".join(f"Doc {i + 1}: {d['text']}" for i, d in enumerate(docs)).startswith(
        "Doc 1: Paris is the capital")
    batch = _post(bm25, {"query": ["capital of France", "", "Berlin"], "top_k": 1}).json()
    assert [len(x) for x in batch] == [1, 0, 1]
    both = _post(bm25, {"query": "q", "queries": ["q"]})
    assert both.status_code == 422 and "not both" in both.json()["error"]


def test_search_r1_client_against_the_simulated_engine(simulated):
    # 1,030 queries, not 2,560: three batches of the server's --max-batch-size 512, the last one
    # partial, which is what a large batch exercises; the tiny model's generation of 2,560 took a
    # minute of the suite
    _replay_search_r1(simulated, big=1030)
    _assert_really_wrong_values_are_4xx(simulated)
    metrics = httpx.get(simulated.url + "/metrics").text
    assert "zerosearch_retrieve_without_context_total 0.0" not in metrics
    assert 'zerosearch_queries_total{mode="useful"}' in metrics
    assert 'zerosearch_queries_total{mode="noisy"}' not in metrics  # --noise-prob 0.0
    # the trainer advances the curriculum from outside
    assert httpx.get(simulated.url + "/noise").json() == {"noise_prob": 0.0}
    r = httpx.post(simulated.url + "/noise", json={"noise_prob": 1.0})
    assert r.status_code == 200 and r.json() == {"noise_prob": 1.0}
    assert httpx.post(simulated.url + "/noise", json={"noise_prob": 1.5}).status_code == 422
    assert _post(simulated, {"queries": ["capital of France"], "topk": 2}).status_code == 200
    metrics = httpx.get(simulated.url + "/metrics").text
    assert 'zerosearch_queries_total{mode="noisy"} 1.0' in metrics
    # ZeroSearch's local-retrieval request, to the simulated engine
    docs = _post(simulated, {"query": "capital of France", "top_k": 2}).json()
    assert isinstance(docs, list) and docs and all(isinstance(d["text"], str) for d in docs)
    simulated.kill()
    log = simulated.proc.stdout.read()
    assert log.count("gets no question, gold answers or noise_prob") == 1
