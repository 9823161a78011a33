"""One device-aware function decides the device-dependent settings, and a GPU run gets none of the
CPU tuning: neither glibc's malloc settings nor the oneDNN decoding step."""

import pytest

from zerosearch.config import ConfigError
from zerosearch.hardware import runtime_choices
from zerosearch.train.config import load_train_config
from zerosearch.train.run import run_choices


@pytest.fixture()
def spies(monkeypatch):
    """Records calls that would change malloc or build the oneDNN step (and changes nothing)."""
    from zerosearch.cpu import decode_step, memory

    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(memory, "memory_cap_callback", lambda: calls.append("memory cap") or "cap")
    monkeypatch.setattr(decode_step, "build", lambda *a, **k: calls.append("decode step"))
    return calls


@pytest.mark.parametrize("preset", ["configs/qwen2.5-3b-base-grpo.yaml", "configs/cpu-smollm2.yaml"])
def test_a_gpu_run_touches_neither_malloc_nor_the_onednn_decode_step(preset, spies, tiny_model,
                                                                     monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.generation import kv as decoding
    from zerosearch.cpu import tune_process

    cfg = load_train_config(preset)
    choices = run_choices(cfg, device="cuda", bf16_native=True)  # a GPU with bf16 (A100, H100...)
    assert choices.device == "cuda" and choices.autocast and choices.fused_lm_head
    assert not (choices.keep_freed_memory or choices.memory_cap or choices.decode_step)
    assert tune_process(choices, log=spies.append) == []
    # the rollouts' decoder asks the same function for the model's device
    monkeypatch.setattr(decoding, "_device_type", lambda model: "cuda")
    model = AutoModelForCausalLM.from_pretrained(tiny_model).to(__import__("torch").bfloat16)
    decoder = decoding.KVDecoder(model, AutoTokenizer.from_pretrained(tiny_model))
    assert decoder.step is None and spies == []


def test_the_cpu_preset_turns_the_tuning_on_only_on_a_cpu(spies, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    from zerosearch.generation import kv as decoding
    from zerosearch.cpu import tune_process

    cpu = run_choices(load_train_config("configs/cpu-smollm2.yaml"), device="cpu")
    assert cpu.keep_freed_memory and cpu.memory_cap and not cpu.fused_lm_head
    assert tune_process(cpu, log=lambda m: None) == ["cap"] and spies == ["malloc", "memory cap"]
    spies.clear()
    # a GPU preset run on a CPU asks for no memory tuning (cpu_tuning is off there); its bf16
    # needs a CPU with native bf16, and on one without it the error names the problem
    gpu_cfg = load_train_config("configs/qwen2.5-3b-base-grpo.yaml")
    gpu_preset = run_choices(gpu_cfg, device="cpu", bf16_native=True)
    assert tune_process(gpu_preset, log=lambda m: None) == [] and spies == []
    with pytest.raises(ConfigError, match="native bf16"):
        run_choices(gpu_cfg, device="cpu", bf16_native=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).to(torch.bfloat16)
    decoding.KVDecoder(model, AutoTokenizer.from_pretrained(tiny_model))
    assert spies == (["decode step"] if cpu.decode_step else [])  # CPUs with native bf16 only


def test_choices_by_device_and_setting():
    gpu = runtime_choices("cuda:1", bf16_native=True)
    assert (gpu.device, gpu.weights_dtype, gpu.autocast, gpu.generation_dtype) == (
        "cuda", "float32", True, "bfloat16")
    assert gpu.fused_lm_head and not gpu.decode_step
    cpu = runtime_choices("cpu", bf16_native=True, cpu_tuning=True)
    assert cpu.autocast and not cpu.fused_lm_head and cpu.decode_step and cpu.keep_freed_memory
    slow = runtime_choices("cpu", bf16_native=False)  # emulated bf16: fp32 everywhere
    assert not (slow.autocast or slow.decode_step) and slow.generation_dtype == "float32"
    assert not slow.keep_freed_memory  # opt-in only
    explicit = runtime_choices("cpu", dtype="bfloat16", bf16=False, fused_lm_head=True,
                               bf16_native=True)
    assert (explicit.weights_dtype, explicit.autocast, explicit.fused_lm_head) == (
        "bfloat16", False, True)
    with pytest.raises(ValueError, match="native bf16"):
        runtime_choices("cpu", bf16=True, bf16_native=False)
    with pytest.raises(ValueError, match="dtype"):
        runtime_choices("cpu", dtype="float16")


def test_run_choices_names_the_setting(monkeypatch):
    monkeypatch.setattr("zerosearch.hardware.bf16_is_fast", lambda device=None: False)
    cfg = load_train_config(None, {"training": {"bf16": True}})
    with pytest.raises(ConfigError, match="training: bf16 needs"):
        run_choices(cfg, device="cpu")
