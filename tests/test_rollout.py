"""The rollout engine: turns, batched searches with each row's own context, masks token by token,
budgets that keep tags well-formed, and a real run with the tiny model."""

import pytest
from transformers import AutoTokenizer

from helpers import RecordingEngine, ScriptedPolicy
from zerosearch.protocol import INVALID_ACTION_MESSAGE
from zerosearch.rollout import RolloutConfig, Row, run_rollouts


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def _split(tok, traj):
    policy = tok.decode([i for i, m in zip(traj.completion_ids, traj.env_mask) if m])
    env = tok.decode([i for i, m in zip(traj.completion_ids, traj.env_mask) if not m])
    return policy, env


def test_masks_searches_and_rows(tok):
    scripts = {
        "Q one?": ["<think>a</think><search>alpha</search>", "<answer>A1</answer>"],
        "Q two?": ["<think>b</think><answer>B</answer>"],
        "Q three?": ["no tags here", "<search>gamma</search>", "<answer>C</answer>"],
    }
    rows = [Row("Q one?", ["A1"], 0), Row("Q two?", ["B"], 1), Row("Q three?", ["C", "c"], 2)]
    engine = RecordingEngine()
    policy = ScriptedPolicy(tok, scripts, trailing=" trailing junk")
    trajs = run_rollouts(rows, policy, tok, engine, RolloutConfig(max_turns=3, topk=2),
                         noise_prob=0.0)
    one, two, three = trajs
    # every active row generated together each turn; the searches of a turn went as one batch
    assert policy.calls == [3, 2, 1]
    assert [[r.query for r in b] for b in engine.batches] == [["alpha"], ["gamma"]]
    # each request carries its own row's question, all gold answers and row id
    req = engine.batches[1][0]
    assert (req.question, req.golden_answers, req.row_id, req.mode) == ("Q three?", ["C", "c"], 2, "useful")
    # token by token: the policy's tokens are exactly what it generated (cut at the action, the
    # trailing junk dropped); everything else is the environment's
    policy_text, env_text = _split(tok, one)
    assert policy_text == "<think>a</think><search>alpha</search><answer>A1</answer>"
    assert env_text == "\n\n<information>Doc 1: alpha-doc0 alpha-doc0 alpha-doc0 alpha-doc0 alpha-doc0\n" \
                       "Doc 2: alpha-doc1 alpha-doc1 alpha-doc1 alpha-doc1 alpha-doc1</information>\n\n"
    assert len(one.completion_ids) == len(one.env_mask)
    assert (one.answer, one.searches, one.turns, one.valid_actions) == ("A1", 1, 2, 2)
    assert (two.answer, two.searches, two.turns) == ("B", 0, 1)
    policy_text, env_text = _split(tok, three)
    assert env_text.startswith(INVALID_ACTION_MESSAGE) and "gamma-doc0" in env_text
    assert "My previous action" not in policy_text
    assert (three.answer, three.invalid_actions, three.turns) == ("C", 1, 3)
    assert one.stats()["useful_searches"] == 1 and three.stats()["answered"]


def test_final_turn_gets_no_search(tok):
    scripts = {"Q?": ["<search>again</search>"]}
    engine = RecordingEngine()
    [t] = run_rollouts([Row("Q?", ["x"])], ScriptedPolicy(tok, scripts), tok, engine,
                       RolloutConfig(max_turns=2))
    assert len(engine.batches) == 2  # two searches executed, the third (final turn) refused
    assert t.turns == 3 and t.searches == 2 and t.final_turn_search and t.answer is None
    assert t.trace[-1]["type"] == "search_refused"


def test_information_block_is_cut_but_closed(tok):
    scripts = {"Q?": ["<search>long</search>", "<answer>x</answer>"]}
    engine = RecordingEngine(docs_per_query=5, words=200)
    [t] = run_rollouts([Row("Q?", ["x"])], ScriptedPolicy(tok, scripts), tok, engine,
                       RolloutConfig(max_turns=1, max_obs_tokens=40))
    _, env_text = _split(tok, t)
    assert env_text.startswith("\n\n<information>Doc 1: long-doc0")
    assert env_text.endswith("</information>\n\n")
    assert sum(1 - m for m in t.env_mask) <= 40 and t.observations_cut == 1 and t.answer == "x"


def test_completion_budget_ends_the_rollout(tok):
    scripts = {"Q?": ["<search>q</search>"]}
    engine = RecordingEngine(docs_per_query=5, words=100)
    [t] = run_rollouts([Row("Q?", ["x"])], ScriptedPolicy(tok, scripts), tok, engine,
                       RolloutConfig(max_turns=4, max_completion_tokens=120, max_obs_tokens=80))
    assert len(t.completion_ids) <= 120 and t.truncated == "completion_budget"
    _, env_text = _split(tok, t)
    assert env_text.count("<information>") == env_text.count("</information>")


def test_turn_budget_is_an_invalid_action(tok):
    scripts = {"Q?": ["<think>" + "word " * 50, "<answer>x</answer>"]}
    [t] = run_rollouts([Row("Q?", ["x"])], ScriptedPolicy(tok, scripts), tok, RecordingEngine(),
                       RolloutConfig(max_turns=2, max_turn_tokens=20))
    assert t.turn_budget_hits == 1 and t.invalid_actions == 1 and t.answer == "x"


def test_no_engine_means_answer_directly(tok):
    scripts = {"Q?": ["<search>q</search>"]}
    [t] = run_rollouts([Row("Q?", ["x"])], ScriptedPolicy(tok, scripts), tok, None, RolloutConfig())
    assert t.turns == 1 and t.final_turn_search and t.searches == 0


def test_real_rollout_with_the_tiny_model(tiny_model, tok):
    from transformers import AutoModelForCausalLM

    from zerosearch.generation.hf import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = [Row(f"Question {i}?", ["x"], i) for i in range(4)]
    trajs = run_rollouts(rows, HFGenerator(model, tok), tok, RecordingEngine(),
                         RolloutConfig(max_turns=2, max_turn_tokens=16, max_completion_tokens=64))
    for t in trajs:
        assert len(t.completion_ids) == len(t.env_mask) <= 64
        assert sum(t.env_mask) > 0 and 1 <= t.turns <= 3
