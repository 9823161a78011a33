"""The mini-world: deterministic, fictional, answerable only by search, split by entity."""

import json
from pathlib import Path

import pytest

from zerosearch.engines.base import SearchRequest
from zerosearch.engines.factory import EngineConfig, build_engine
from zerosearch.miniworld import MiniWorldConfig, generate, questions, write_world
from zerosearch.protocol import passage_text
from zerosearch.qa import load_qa
from zerosearch.sim.label import contains_answer

SMALL = dict(people=30, works=20, organisations=8, cities=8, countries=3, distractors=15)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_byte_identical_files(tmp_path):
    write_world(tmp_path / "a", MiniWorldConfig(seed=7, **SMALL))
    write_world(tmp_path / "b", MiniWorldConfig(seed=7, **SMALL))
    write_world(tmp_path / "c", MiniWorldConfig(seed=8, **SMALL))
    for name in ("corpus.jsonl", "train.jsonl", "test.jsonl", "world.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() != (tmp_path / "c" / "corpus.jsonl").read_bytes()


def test_files_are_flashrag_and_load(tmp_path):
    counts = write_world(tmp_path, MiniWorldConfig(**SMALL))
    corpus = _read(tmp_path / "corpus.jsonl")
    assert len(corpus) == counts["passages"] and all(set(p) == {"id", "contents"} for p in corpus)
    title, text = passage_text(corpus[0]["contents"])
    assert title and text and title in text
    rows = load_qa(tmp_path / "test.jsonl")
    assert len(rows) == counts["test"] and all(r.golden_answers for r in rows)
    hops = {r["metadata"]["hops"] for r in _read(tmp_path / "train.jsonl")}
    assert hops == {1, 2, 3}


def test_every_answer_is_in_the_corpus_and_entities_do_not_cross_the_split(tmp_path):
    write_world(tmp_path, MiniWorldConfig(**SMALL))
    corpus_text = " ".join(p["contents"] for p in _read(tmp_path / "corpus.jsonl"))
    train, test = _read(tmp_path / "train.jsonl"), _read(tmp_path / "test.jsonl")
    for row in train + test:
        assert contains_answer([corpus_text], row["golden_answers"]), row
    assert not {r["metadata"]["subject"] for r in train} & {r["metadata"]["subject"] for r in test}


def test_names_are_unique_and_multi_hop_chains_hold():
    world = generate(MiniWorldConfig(seed=3, **SMALL))
    names = [e["name"] for group in (world.countries, world.cities, world.people, world.organisations,
                                      world.works, world.distractors) for e in group]
    assert len(names) == len(set(names))
    people = {p["name"]: p for p in world.people}
    cities = {c["name"]: c for c in world.cities}
    for q in questions(world):
        if q["type"] == "creator_country":
            work = next(w for w in world.works if w["name"] == q["subject"])
            assert q["answer"] == cities[people[work["creator"]]["birth_city"]]["country"]


def test_single_hop_answers_are_found_by_bm25_with_the_question(tmp_path):
    write_world(tmp_path, MiniWorldConfig(**SMALL))
    rows = [r for r in _read(tmp_path / "test.jsonl") if r["metadata"]["hops"] == 1]
    engine = build_engine(EngineConfig(kind="bm25", corpus=str(tmp_path / "corpus.jsonl"), topk=3))
    results = engine.search([SearchRequest(r["question"], r["question"], r["golden_answers"], topk=3)
                             for r in rows])
    found = sum(contains_answer([d.text for d in res.documents], r["golden_answers"])
                for r, res in zip(rows, results))
    assert found / len(rows) >= 0.9


def test_bad_sizes_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="people must be >= 1"):
        write_world(tmp_path, MiniWorldConfig(people=0))
    with pytest.raises(ValueError, match="test_fraction"):
        write_world(tmp_path, MiniWorldConfig(test_fraction=1.5))
