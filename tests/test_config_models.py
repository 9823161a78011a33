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
