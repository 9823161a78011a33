"""Metrics and the curriculum against values computed by hand."""

import math

import pytest

from zerosearch.curriculum import CurriculumConfig, noise_probability
from zerosearch.rewards import cover_em, exact_match, f1_score, get_metric, normalize_answer


def test_normalize_answer():
    assert normalize_answer("The  Eiffel-Tower, in PARIS!") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"


def test_strict_em_vs_cover_em():
    golds = ["Eiffel Tower", "La tour Eiffel"]
    assert exact_match("the eiffel tower.", golds) == 1.0
    # padding the answer defeats strict EM but not cover-EM (the reward hack F1 guards against)
    assert exact_match("Eiffel Tower in Paris France", golds) == 0.0
    assert cover_em("Eiffel Tower in Paris France", golds) == 1.0
    assert cover_em("Tower", golds) == 0.0
    # an empty gold answer never "covers" everything
    assert cover_em("anything", [""]) == 0.0


def test_f1_hand_computed():
    # pred tokens [eiffel, tower, in, paris], gold [eiffel, tower]: P = 2/4, R = 2/2, F1 = 2/3
    assert math.isclose(f1_score("the Eiffel Tower in Paris", ["Eiffel Tower"]), 2 / 3)
    # max over gold answers: "tour eiffel" shares 1 token with pred [eiffel] -> P=1, R=1/2 -> 2/3;
    # "eiffel" alone -> 1.0
    assert f1_score("Eiffel", ["La tour Eiffel", "Eiffel"]) == 1.0
    assert math.isclose(f1_score("Eiffel", ["tour Eiffel"]), 2 / 3)
    # repeated tokens count with multiplicity: pred [new, new, york] vs gold [new, york]
    # common = {new:1, york:1} = 2, P = 2/3, R = 1 -> F1 = 0.8
    assert math.isclose(f1_score("new new york", ["New York"]), 0.8)
    assert f1_score("Berlin", ["Paris"]) == 0.0


def test_f1_of_empty_against_empty_is_zero():
    # SQuAD v1.1 and upstream: an answer that normalises to nothing never scores, even against a
    # gold answer that normalises to nothing too ("the" -> "").
    assert f1_score("", [""]) == 0.0
    assert f1_score("The.", ["a"]) == 0.0
    assert f1_score("", ["Paris"]) == 0.0 and f1_score("Paris", ["the"]) == 0.0


def test_no_answer_scores_zero_everywhere():
    for metric in ("em", "cover_em", "f1"):
        assert get_metric(metric)(None, ["Beijing"]) == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        get_metric("bleu")


def test_curriculum_hand_computed():
    # p_s=0, p_e=0.5, b=4, m=100: halfway (4**0.5 - 1)/(4 - 1) * 0.5 = 1/6
    assert noise_probability(0, 100, 0.0, 0.5) == 0.0
    assert math.isclose(noise_probability(50, 100, 0.0, 0.5), 1 / 6)
    assert math.isclose(noise_probability(100, 100, 0.0, 0.5), 0.5)
    # p_s=0.25, p_e=0.75, b=2, 1/4 of the way: 0.25 + (2**0.25 - 1) * 0.5
    assert math.isclose(noise_probability(25, 100, 0.25, 0.75, base=2), 0.25 + (2**0.25 - 1) * 0.5)
    # base 1 is the linear limit; past the end it stays at p_end
    assert math.isclose(noise_probability(50, 100, 0.0, 0.5, base=1), 0.25)
    assert math.isclose(noise_probability(150, 100, 0.0, 0.5), 0.5)


def test_curriculum_errors_and_ablation():
    with pytest.raises(ValueError, match="total number of steps"):
        noise_probability(3, None, 0.0, 0.5)
    with pytest.raises(ValueError, match="total number of steps"):
        noise_probability(3, 0, 0.0, 0.5)
    with pytest.raises(ValueError, match="p_end"):
        CurriculumConfig(p_end=1.5)
    flat = CurriculumConfig(p_start=0.2, p_end=0.7, enabled=False)
    assert flat.at(90, 100) == 0.2
    assert math.isclose(CurriculumConfig(0.0, 0.5, base=4).at(50, 100), 1 / 6)
