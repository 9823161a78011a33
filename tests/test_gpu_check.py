"""The CPU-testable parts of benchmarks/gpu_check.py (the GPU check itself needs CUDA): its FLOP
count, its random-weights model, its training config, and a clear refusal without a GPU."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_count_per_step():
    gpu = _module()
    record = {"tokens/prompt": 800, "tokens/completion": 400, "tokens/generated": 300,
              "tokens/length_sq": 10_000}
    gen, opt = gpu.step_flops(record, body=1000, head=100, layers=2, width=8, generations=8, ref=0)
    assert gen == 2 * 1000 * (100 + 400) + 2 * 100 * 300
    assert opt == 3 * (2 * 1000 * 1200 + 2 * 100 * 400 + 2 * 2 * 8 * 10_000)
    _, with_ref = gpu.step_flops(record, 1000, 100, 2, 8, 8, ref=1)
    assert with_ref == opt / 3 * 4


def test_random_weights_model_and_config(tmp_path, tiny_model):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gpu = _module()
    assert gpu.missing_packages() == []
    path = gpu.random_model_dir("embedded:tiny-random", tmp_path / "random")
    lm = AutoModelForCausalLM.from_pretrained(path)
    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert lm.config.to_dict()["hidden_size"] == AutoConfig.from_pretrained(tiny_model).hidden_size
    assert next(lm.parameters()).dtype == torch.bfloat16
    assert not torch.equal(lm.get_input_embeddings().weight.float(),
                           original.get_input_embeddings().weight.float())
    from zerosearch.miniworld import write_world

    world = tmp_path / "world"
    write_world(world)
    cfg = gpu.train_config(path, world, tmp_path / "run", 3, 16, 8, 32, 128)
    cfg.validate()
    assert cfg.training.bf16 and not cfg.training.use_vllm and cfg.algorithm.name == "grpo"


def test_refuses_clearly_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
