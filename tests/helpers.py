"""Test doubles: a scripted policy (chosen turn texts) and an engine that records requests."""

from zerosearch.engines.base import Document, SearchResult
from zerosearch.rollout import Generation


class ScriptedPolicy:
    """Plays a fixed list of turn texts per row (rows are told apart by their question)."""

    def __init__(self, tok, scripts, trailing=""):
        self.tok, self.scripts, self.trailing = tok, scripts, trailing
        self.calls = []

    def generate(self, contexts, max_new_tokens, temperature, top_p):
        self.calls.append(len(contexts))
        out = []
        for ctx in contexts:
            text = self.tok.decode(ctx)
            question = next(q for q in self.scripts if f"Question: {q}\n" in text)
            turn = text.count("\n\n<information>") + text.count("My previous action is invalid")
            script = self.scripts[question]
            reply = script[min(turn, len(script) - 1)] + self.trailing
            out.append(Generation(self.tok(reply, add_special_tokens=False)["input_ids"][:max_new_tokens]))
        return out


class RecordingEngine:
    name = "recording"

    def __init__(self, docs_per_query=2, words=5):
        self.batches, self.docs_per_query, self.words = [], docs_per_query, words

    def search(self, requests):
        self.batches.append(list(requests))
        return [SearchResult(query=r.query, engine=self.name, topk=r.topk, mode=r.mode,
                             documents=[Document(text=" ".join([f"{r.query}-doc{i}"] * self.words))
                                        for i in range(self.docs_per_query)], row_id=r.row_id)
                for r in requests]

    def describe(self):
        return {}

    def close(self):
        pass
