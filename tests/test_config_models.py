"""Config mapping errors name the problem; the model resolver explains what exists."""

import pytest

from zerosearch.config import ConfigError, from_dict
from zerosearch.engines.factory import EngineConfig
from zerosearch.models import ModelNotFoundError, resolve_model


def test_engine_config_from_dict_rejects_unknown_keys_and_types():
    cfg = from_dict(EngineConfig, {"kind": "bm25", "corpus": "c.jsonl", "topk": 3,
                                   "temperature": 1, "backend_urls": ["http://a"]})
    assert (cfg.kind, cfg.topk, cfg.temperature, cfg.backend_urls) == ("bm25", 3, 1.0, ["http://a"])
    with pytest.raises(ConfigError, match="unknown key.*topkk"):
        from_dict(EngineConfig, {"topkk": 3})
    with pytest.raises(ConfigError, match="topk: expected int"):
        from_dict(EngineConfig, {"topk": "five"})
    with pytest.raises(ConfigError, match="needs a corpus"):
        from_dict(EngineConfig, {"kind": "bm25"})
    with pytest.raises(ConfigError, match="unknown engine 'google'"):
        from_dict(EngineConfig, {"kind": "google"})


def test_resolver_errors_and_passthrough(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="embedded:tiny-random"):
        resolve_model("embedded:gpt5")
    with pytest.raises(ModelNotFoundError, match="cannot resolve"):
        resolve_model("not a model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an uncached hub id fails now, in one line
    with pytest.raises(ModelNotFoundError, match="not in the local hub cache"):
        resolve_model("nobody/no-such-model")
    assert resolve_model("embedded:minilm").endswith("model")


def test_tiny_model_loads_with_the_smollm2_tokenizer(tiny_model):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert config.num_hidden_layers == 2 and config.vocab_size == len(tok) == 49152
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                     tokenize=False)


def test_converted_smollm2_is_a_plain_trainable_model():
    import json
    from pathlib import Path

    path = Path(resolve_model("embedded:smollm2-135m-instruct"))
    config = json.loads((path / "config.json").read_text())
    # a leftover GGUF quantization_config made the Trainer refuse to fine-tune it
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (path / "model.safetensors").stat().st_size > 500_000_000  # fp32, dequantised


def test_topk_is_set_once_in_the_engine_section(tmp_path):
    from zerosearch.train.config import load_train_config

    preset = tmp_path / "p.yaml"
    preset.write_text("engine:\n  kind: simulated\n  topk: 4\n")
    assert load_train_config(preset).rollout.topk == 4
    preset.write_text("engine:\n  kind: simulated\n  topk: 4\nrollout:\n  topk: 2\n")
    with pytest.raises(ConfigError, match="rollout.topk is taken from engine.topk"):
        load_train_config(preset)


def test_training_without_questions_is_a_clear_error():
    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import train

    with pytest.raises(ConfigError, match="no training questions: set data.train"):
        train(load_train_config(None, {"model": {"name": "embedded:tiny-random"}}), log=lambda m: None)


def test_a_section_given_in_part_keeps_the_default_its_field_declares():
    """A YAML that sets one key of a nested section changes that key only: the rest stays what the
    enclosing config declares (quickstart budgets, greedy evaluation), not the section class's
    defaults."""
    from zerosearch.evaluate import EvalConfig
    from zerosearch.quickstart import QuickstartConfig

    cfg = from_dict(QuickstartConfig, {"rollout": {"max_turns": 3}, "warmup": {"steps": 7},
                                       "rl": {"curriculum": {"p_end": 0.8}}, "sim": {"tune": {"max_steps": 7}}})
    default = QuickstartConfig()
    assert cfg.rollout.max_turns == 3 and cfg.rollout.max_turn_tokens == default.rollout.max_turn_tokens == 48
    assert cfg.warmup.steps == 7 and cfg.warmup.batch_size == default.warmup.batch_size == 4
    assert cfg.rl.curriculum.p_end == 0.8 and cfg.rl.curriculum.p_start == 0.0
    assert cfg.sim.tune.max_steps == 7 and cfg.sim.tune.learning_rate == default.sim.tune.learning_rate
    assert cfg.sim.tune.cpu_tuning and cfg.sim.tune.max_length == 512
    evaluation = from_dict(EvalConfig, {"rollout": {"max_turns": 2}})
    assert evaluation.rollout.temperature == 0.0 and evaluation.rollout.max_turns == 2
    # the defaults themselves are fresh objects, never shared between two loads
    assert from_dict(QuickstartConfig, {}).rollout is not from_dict(QuickstartConfig, {}).rollout


def test_quickstart_simulator_tuning_is_one_sim_train_config(tmp_path):
    """The quickstart's simulator stage runs `sim train`'s own SimTrainConfig (``sim.tune``); it
    fills in only the base model, data, output folder and seed, and refuses a YAML that sets them."""
    from zerosearch.quickstart import QuickstartConfig, simulator_tuning

    cfg = from_dict(QuickstartConfig, {"output_dir": str(tmp_path), "seed": 3, "simulator_base": "m",
                                       "sim": {"tune": {"max_steps": 9, "answer_weight": 10.0}}})
    tune = simulator_tuning(cfg)
    assert (tune.model, tune.seed, tune.max_steps, tune.answer_weight) == ("m", 3, 9, 10.0)
    assert tune.data == str(tmp_path / "sim" / "sft" / "train.jsonl")
    assert tune.output_dir == str(tmp_path / "sim" / "simulator")
    with pytest.raises(ConfigError, match="sim.tune.model"):
        simulator_tuning(from_dict(QuickstartConfig, {"sim": {"tune": {"model": "other"}}}))
    with pytest.raises(ConfigError, match="unknown key.*steps"):
        from_dict(QuickstartConfig, {"sim": {"steps": 5}})


def test_quickstart_rl_stage_is_train_s_own_algorithm_and_training_sections(tmp_path):
    """The quickstart's RL stage runs `zerosearch train`'s own AlgorithmConfig and TrainingConfig
    (``rl.algorithm``, ``rl.training``); it fills in only the output folder and seed, refuses a YAML
    that sets them, and a micro-batch of 0 (the quickstart's) is the whole step however it is sized."""
    from zerosearch.quickstart import QuickstartConfig, rl_train_config, simulator_config

    cfg = from_dict(QuickstartConfig, {"output_dir": str(tmp_path), "seed": 3,
                                       "rl": {"training": {"max_steps": 9, "prompts_per_step": 3},
                                              "algorithm": {"num_generations": 5, "beta": 0.02}}})
    train = rl_train_config(cfg, "m", simulator_config(cfg), cfg.rl.curriculum, tmp_path / "rl")
    t, a = train.training, train.algorithm
    assert (t.max_steps, t.prompts_per_step, t.seed, t.output_dir) == (9, 3, 3, str(tmp_path / "rl"))
    assert (a.num_generations, a.beta, a.name, a.reward) == (5, 0.02, "grpo", "f1")
    assert t.micro_batch_size == 0 and t.cpu_tuning and t.learning_rate == QuickstartConfig().rl.training.learning_rate
    arm = rl_train_config(cfg, "m", simulator_config(cfg), cfg.rl.curriculum, tmp_path / "rl",
                          algorithm="ppo", mask_inserted_tokens=False, seed=7)
    assert (arm.algorithm.name, arm.training.mask_inserted_tokens, arm.training.seed) == ("ppo", False, 7)
    assert cfg.rl.algorithm.name == "grpo"  # the arm's choice does not leak back into the config
    for owned in ({"output_dir": "elsewhere"}, {"seed": 5}):
        bad = from_dict(QuickstartConfig, {"rl": {"training": owned}})
        with pytest.raises(ConfigError, match=f"rl.training.{next(iter(owned))}"):
            rl_train_config(bad, "m", simulator_config(bad), bad.rl.curriculum, tmp_path / "rl")
    with pytest.raises(ConfigError, match="unknown key.*steps"):
        from_dict(QuickstartConfig, {"rl": {"steps": 5}})
    with pytest.raises(ConfigError, match="micro_batch_size must be >= 0"):
        rl_train_config(from_dict(QuickstartConfig, {"rl": {"training": {"micro_batch_size": -1}}}),
                        "m", simulator_config(cfg), cfg.rl.curriculum, tmp_path / "rl")


def test_quickstart_evaluates_its_rl_start_on_the_split_it_is_told(tmp_path):
    """The evaluated rows end with RL's start (the warmed-up agent, or the untrained one without a
    warm-up) and the trained agent; ``eval_split: val`` needs a validation split and is refused
    before any stage runs without one, as is an unknown split."""
    from zerosearch.quickstart import QuickstartConfig, eval_runs, run

    cfg = QuickstartConfig(output_dir=str(tmp_path / "qs"))
    assert [name for name, _, _ in eval_runs(cfg, "warm", "rl")] == ["direct", "rag", "warmup", "zerosearch"]
    assert [name for name, _, _ in eval_runs(cfg, cfg.policy, "rl")] == ["direct", "rag", "untrained", "zerosearch"]
    for given, message in (({"eval_split": "val"}, "needs val_questions"), ({"eval_split": "dev"}, "test or val")):
        with pytest.raises(ConfigError, match=message):
            run(from_dict(QuickstartConfig, {"output_dir": str(tmp_path / "qs"), **given}), lambda *a: None)
    assert not (tmp_path / "qs").exists()


def test_a_save_cut_short_never_looks_finished(tmp_path):
    """Stages treat ``<folder>/config.json`` as "done", and save_pretrained writes it before the
    weights: a save that dies half-way must leave the old folder (or none), never a half one."""
    from zerosearch.models import save_atomically

    class Saves:
        def __init__(self, text, fail=False, file="model.safetensors"):
            self.text, self.fail, self.file = text, fail, file

        def save_pretrained(self, folder):
            (folder / "config.json").write_text(self.text)
            if self.fail:
                raise OSError("disk full")
            (folder / self.file).write_text(self.text)

    target = tmp_path / "final"
    with pytest.raises(OSError):
        save_atomically(target, Saves("a", fail=True), Saves("tok", file="tokenizer.json"))
    assert not target.exists()
    save_atomically(target, Saves("a"), Saves("tok", file="tokenizer.json"))
    assert (target / "model.safetensors").read_text() == "a"
    save_atomically(target, Saves("b"), Saves("tok", file="tokenizer.json"))  # a run trained further replaces it
    assert (target / "model.safetensors").read_text() == "b"
    with pytest.raises(OSError):
        save_atomically(target, Saves("c", fail=True), Saves("tok", file="tokenizer.json"))
    assert (target / "model.safetensors").read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]  # no temporary folders left
