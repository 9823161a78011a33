"""Every engine behind the one interface: real BM25, dense and simulated engines; web against a
local fake SerpAPI; the OpenAI back end against dead and silent ports (bounded, never hangs)."""

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zerosearch.corpus import read_meta
from zerosearch.engines import EngineConfig, EngineError, SearchRequest, build_engine
from zerosearch.engines.bm25 import BM25Engine
from zerosearch.engines.simulated import SimulatedEngine
from zerosearch.llm.base import Completion, GenerationParams
from zerosearch.llm.openai_backend import OpenAIBackend
from zerosearch.retry import RetryPolicy


def test_bm25_builds_saves_reloads_and_rebuilds(tiny_corpus):
    logs = []
    engine = BM25Engine(tiny_corpus, log=logs.append)
    index = tiny_corpus.with_name(tiny_corpus.name + ".bm25s")
    assert len(logs) == 1 and read_meta(index)["size"] == 5
    results = engine.search([SearchRequest("who wrote origin of species", topk=2, row_id=7),
                             SearchRequest("capital of Germany", topk=1),
                             SearchRequest("xylophone quasar", topk=3)])
    assert results[0].documents[0].title == "Charles Darwin" and results[0].row_id == 7
    assert results[1].documents[0].id == "p2" and len(results[1].documents) == 1
    # nothing matches: reported as a shortfall, not an error and not filler documents
    assert results[2].documents == [] and results[2].shortfall == 3 and results[2].ok
    BM25Engine(tiny_corpus, log=logs.append)
    assert len(logs) == 1, "a saved index must be reloaded, not rebuilt"
    with open(tiny_corpus, "a") as f:
        f.write(json.dumps({"id": "p6", "contents": '"Tokyo"\nTokyo is the capital of Japan.'}) + "\n")
    engine = BM25Engine(tiny_corpus, log=logs.append)
    assert len(logs) == 2, "a changed corpus must be re-indexed"
    assert engine.search([SearchRequest("capital of Japan", topk=1)])[0].documents[0].id == "p6"


def test_bm25_on_the_shared_corpus_finds_gold_passages(shared_corpus, tmp_path):
    engine = build_engine(EngineConfig(kind="bm25", corpus=str(shared_corpus),
                                       index_path=str(tmp_path / "idx")), log=lambda m: None)
    result = engine.search([SearchRequest("On the Origin of Species author", topk=5)])[0]
    assert any("Darwin" in d.text for d in result.documents)


def test_dense_engine_on_a_tiny_corpus(tiny_corpus):
    engine = build_engine(EngineConfig(kind="dense", corpus=str(tiny_corpus)), log=lambda m: None)
    result = engine.search([SearchRequest("tallest peak in the world", topk=2)])[0]
    assert result.documents[0].title == "Mount Everest" and len(result.documents) == 2


class _ScriptedBackend:
    """Stands in for an LLM whose outputs we choose, to test parsing and error paths."""

    def __init__(self, outputs):
        self.outputs, self.seen, self.avoid = outputs, [], []

    def chat(self, conversations, params, avoid=None):
        self.seen.extend(conversations)
        self.avoid.append(avoid)
        return [self.outputs[i % len(self.outputs)] for i in range(len(conversations))]

    def describe(self):
        return {"backend": "scripted"}

    def close(self):
        pass


def test_simulated_engine_modes_rows_and_shortfalls():
    backend = _ScriptedBackend([Completion("Doc 1: a\nDoc 2: b"), Completion("nothing useful"),
                                Completion(None, "boom", "unavailable", retries=3)])
    engine = SimulatedEngine(backend, seed=0)
    reqs = [SearchRequest("q1", "Q1?", ["A1"], topk=2, noise_prob=0.0, row_id=0),
            SearchRequest("q2", "Q2?", ["A2"], topk=3, noise_prob=1.0, row_id=1),
            SearchRequest("q3", "Q3?", ["A3"], topk=2, mode="useful", row_id=2)]
    r = engine.search(reqs)
    assert [x.mode for x in r] == ["useful", "noisy", "useful"]
    assert [x.row_id for x in r] == [0, 1, 2]
    assert [d.text for d in r[0].documents] == ["a", "b"] and r[0].shortfall == 0
    # "nothing useful" parses as one document: reported as 2 short of the 3 asked
    assert r[1].shortfall == 2 and r[1].ok
    assert r[2].error_kind == "unavailable" and r[2].retries == 3 and not r[2].documents
    # each prompt carries its own row's question and answer (the public code mixed rows up)
    assert '"Q2?" whose answer is A2' in backend.seen[1][1]["content"]
    assert "generate three noisy documents" in backend.seen[1][1]["content"]
    assert SimulatedEngine(_ScriptedBackend([Completion("")])).search(
        [SearchRequest("q")])[0].error_kind == "bad_output"


def test_answer_surface_forms():
    from zerosearch.engines.simulated import answer_surface_forms

    assert answer_surface_forms(['"What\'s My Name?"', "The Beatles", "", "iPhone"]) == [
        "What's My Name", "what's my name", "WHAT'S MY NAME", "Beatles", "beatles", "BEATLES",
        "iPhone", "iphone", "IPhone", "IPHONE"]
    # an answer written in lower case or with odd spacing still bans the title-cased spelling
    assert answer_surface_forms(["charles  darwin\n"]) == [
        "charles darwin", "Charles darwin", "Charles Darwin", "CHARLES DARWIN"]


def test_noisy_guard_sends_the_answers_of_noisy_rows_only():
    backend = _ScriptedBackend([Completion("Doc 1: a")])
    reqs = [SearchRequest("q1", "Q1?", ["Paris"], mode="useful"),
            SearchRequest("q2", "Q2?", ["the Nile", "Nile River"], mode="noisy")]
    SimulatedEngine(backend).search(reqs)
    assert backend.avoid == [None]  # guard off (the default): nothing is banned
    guarded = SimulatedEngine(backend, noisy_guard=True)
    guarded.search(reqs)
    assert backend.avoid[-1] == [[], ["Nile", "nile", "NILE", "Nile River", "nile river", "NILE RIVER"]]
    assert guarded.describe()["noisy_guard"] is True


class _RedrawBackend:
    """Answers each call with the next of ``rounds`` (one output per conversation of the call)."""

    def __init__(self, rounds):
        self.rounds, self.calls = list(rounds), []

    def chat(self, conversations, params, avoid=None):
        self.calls.append((len(conversations), avoid))
        outputs = self.rounds.pop(0)
        assert len(outputs) == len(conversations)
        return [Completion(t, latency_s=1.0) for t in outputs]

    def describe(self):
        return {"backend": "redraw"}

    def close(self):
        pass


def test_spells_answer_reads_text_as_answer_matching_does():
    from zerosearch.engines.simulated import spells_answer

    assert spells_answer("It lies on the Seine, in PARIS.", ["Paris"])
    assert spells_answer("the Amazon\nRiver basin", ["Amazon River"])
    assert spells_answer("Parisian cafés", ["paris"])  # a word that starts with it gives it away
    assert not spells_answer("a comparison of cities", ["Paris"])
    assert not spells_answer("Amazon forests", ["Amazon River"])
    assert not spells_answer("anything", ["", "the"])


def test_noisy_guard_redraws_a_leaking_output_and_drops_what_still_leaks():
    from zerosearch.engines.simulated import GUARD_REDRAWS

    reqs = [SearchRequest("q1", "Q1?", ["Paris"], mode="noisy", topk=2, row_id=0),
            SearchRequest("q2", "Q2?", ["Paris"], mode="useful", topk=2, row_id=1),
            SearchRequest("q3", "Q3?", ["Nile"], mode="noisy", topk=2, row_id=2)]
    # row 0 leaks once then comes back clean; useful row 1 may name it; row 2 is clean at once
    backend = _RedrawBackend([["Doc 1: In Paris.\nDoc 2: Lyon.", "Doc 1: Paris.", "Doc 1: Rome."],
                              ["Doc 1: Lyon.\nDoc 2: Nice."]])
    r = SimulatedEngine(backend, noisy_guard=True).search(reqs)
    assert backend.calls[1] == (1, [["Paris", "paris", "PARIS"]])  # only the leaking row again
    assert [d.text for d in r[0].documents] == ["Lyon.", "Nice."] and r[0].latency_s == 2.0
    assert [d.text for d in r[1].documents] == ["Paris."] and [d.text for d in r[2].documents] == ["Rome."]
    # an output that leaks every time: its leaking documents are dropped (a shortfall) ...
    leaky = ["Doc 1: PARIS, France.\nDoc 2: Lyon."]
    backend = _RedrawBackend([leaky] * (GUARD_REDRAWS + 1))
    r = SimulatedEngine(backend, noisy_guard=True).search(reqs[:1])[0]
    assert len(backend.calls) == GUARD_REDRAWS + 1
    assert [d.text for d in r.documents] == ["Lyon."] and r.shortfall == 1 and r.ok
    # ... and when none is left the result says why
    backend = _RedrawBackend([["Doc 1: paris."]] * (GUARD_REDRAWS + 1))
    r = SimulatedEngine(backend, noisy_guard=True).search(reqs[:1])[0]
    assert r.error_kind == "bad_output" and "spelled a gold answer" in r.error and not r.documents
    # without the guard nothing is read twice
    backend = _RedrawBackend([leaky])
    assert SimulatedEngine(backend).search(reqs[:1])[0].documents[0].text == "PARIS, France."


class _JSONHandler(BaseHTTPRequestHandler):
    """A quiet local fake of an HTTP API that answers JSON."""

    def send_json(self, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serving(handler):
    """The base URL of ``handler`` served on a free local port, for the block's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


class _FakeChatServer(_JSONHandler):
    """An OpenAI-compatible endpoint that keeps the request bodies it gets."""

    bodies: list = []

    def do_POST(self):
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_json({"choices": [{"message": {"content": "Doc 1: x"}}]})


def test_openai_backend_sends_avoid_as_bad_words():
    with _serving(_FakeChatServer) as base:
        backend = OpenAIBackend([f"{base}/v1"], model="m")
        chats = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
        out = backend.chat(chats, GenerationParams(), avoid=[["Nile", "nile"], []])
        assert [c.text for c in out] == ["Doc 1: x", "Doc 1: x"]
        by_prompt = {b["messages"][0]["content"]: b for b in _FakeChatServer.bodies}
        assert by_prompt["a"]["bad_words"] == ["Nile", "nile"] and "bad_words" not in by_prompt["b"]
        backend.close()


def test_noise_probability_is_honoured_statistically():
    engine = SimulatedEngine(_ScriptedBackend([Completion("Doc 1: x")]), seed=1)
    results = engine.search([SearchRequest(f"q{i}", noise_prob=0.3) for i in range(400)])
    noisy = sum(r.mode == "noisy" for r in results)
    assert 90 <= noisy <= 150  # 120 expected; ~4.9 standard deviations either side


def test_simulated_engine_with_the_tiny_model_in_process(tiny_model):
    engine = build_engine(EngineConfig(kind="simulated", model="embedded:tiny-random",
                                       max_new_tokens=12, seed=0))
    try:
        results = engine.search([SearchRequest(f"query {i}", "Q?", ["A"], topk=3, row_id=i)
                                 for i in range(4)])
    finally:
        engine.close()
    assert len(results) == 4 and [r.row_id for r in results] == [0, 1, 2, 3]
    for r in results:  # a random model writes junk; whatever it wrote is accounted for
        assert (r.error_kind == "bad_output") if r.error else (len(r.documents) + r.shortfall == 3)


def _dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def test_openai_backend_gives_up_on_a_dead_endpoint_quickly():
    backend = OpenAIBackend([f"http://127.0.0.1:{_dead_port()}/v1"], model="m", policy=RetryPolicy(timeout_s=2,
                            max_retries=2, backoff_s=0.05))
    started = time.monotonic()
    [c] = backend.chat([[{"role": "user", "content": "hi"}]], GenerationParams())
    assert c.text is None and c.error_kind == "unavailable" and c.retries == 2
    assert "gave up after 2 retries" in c.error and time.monotonic() - started < 5


def test_openai_backend_times_out_on_a_silent_endpoint():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    try:
        backend = OpenAIBackend([f"http://127.0.0.1:{silent.getsockname()[1]}"], model="m",
                                policy=RetryPolicy(timeout_s=0.5, max_retries=1, backoff_s=0.05))
        started = time.monotonic()
        [c] = backend.chat([[{"role": "user", "content": "hi"}]], GenerationParams())
        assert c.error_kind == "timeout" and time.monotonic() - started < 4
    finally:
        silent.close()


class _FakeSerpAPI(_JSONHandler):
    def do_GET(self):
        from urllib.parse import parse_qs, urlparse

        q = parse_qs(urlparse(self.path).query)
        if q.get("api_key") != ["good"]:
            self.send_response(401)
            self.end_headers()
            return
        self.send_json({"organic_results": [{"title": f"T{i}", "snippet": f"{q['q'][0]} snippet {i}",
                                             "link": f"http://x/{i}"} for i in range(10)]})


def test_web_engine_against_a_local_fake(monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    with pytest.raises(EngineError, match="SERPAPI_API_KEY"):
        build_engine(EngineConfig(kind="web"))
    with _serving(_FakeSerpAPI) as base:
        url = f"{base}/search.json"
        engine = build_engine(EngineConfig(kind="web", web_api_key="good", web_url=url))
        [r] = engine.search([SearchRequest("eiffel", topk=3)])
        assert [d.title for d in r.documents] == ["T0", "T1", "T2"] and r.documents[0].text == "eiffel snippet 0"
        bad = build_engine(EngineConfig(kind="web", web_api_key="bad", web_url=url))
        [r] = bad.search([SearchRequest("eiffel")])
        assert r.error_kind == "bad_request" and "API key" in r.error


class _FlakyCompletions(_JSONHandler):
    """A completions endpoint that answers the given statuses first, then a continuation."""

    statuses: list = []
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        self.rfile.read(int(self.headers["content-length"]))
        if self.statuses:
            status = self.statuses.pop(0)
            self.send_response(status)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"nope")
            return
        self.send_json({"choices": [{"text": " x</answer>", "token_ids": [5, 6],
                                     "finish_reason": "stop", "stop_reason": "</answer>"}]})


def test_policy_endpoint_retries_5xx_and_fails_fast_on_4xx():
    """EndpointGenerator retries through the shared retry helper: a 503 then a success costs one
    retry; a 400 is final on the first attempt and names the status."""
    from types import SimpleNamespace

    from zerosearch import retry
    from zerosearch.generation.endpoint import EndpointConfig, EndpointError, EndpointGenerator

    tokenizer = SimpleNamespace(eos_token_id=2)
    with _serving(_FlakyCompletions) as url:
        gen = EndpointGenerator(EndpointConfig(urls=[url + "/v1"], model="m", backoff_s=0.01,
                                               timeout_s=5), tokenizer)
        try:
            _FlakyCompletions.statuses, _FlakyCompletions.calls = [503], 0
            before = retry.retries_spent()
            [out] = gen.generate([[1, 2, 3]], 8, 0.0, 1.0)
            assert out.ids == [5, 6] and _FlakyCompletions.calls == 2
            assert retry.retries_spent() - before == 1
            _FlakyCompletions.statuses, _FlakyCompletions.calls = [400], 0
            with pytest.raises(EndpointError, match="HTTP 400"):
                gen.generate([[1]], 8, 0.0, 1.0)
            assert _FlakyCompletions.calls == 1
            _FlakyCompletions.statuses, _FlakyCompletions.calls = [503, 503, 503], 0
            with pytest.raises(EndpointError, match="503"):
                gen.generate([[1]], 8, 0.0, 1.0)
            assert _FlakyCompletions.calls == 3  # max_retries=2: three attempts, then the error
        finally:
            gen.close()
