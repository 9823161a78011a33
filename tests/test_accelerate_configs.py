"""The accelerate launch configs (configs/accelerate/*.yaml) validated without a GPU: each loads
with accelerate's own loader, FSDP's section builds accelerate's FSDP plugin, DeepSpeed's keys are
the plugin's; and an FSDP/DeepSpeed launch on a CPU is refused (accelerate would train unsharded)."""

import dataclasses
from pathlib import Path

import pytest

from zerosearch.config import ConfigError
from zerosearch.train.run import sharding_refusal

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


def test_every_config_is_checked():
    assert {p.stem for p in CONFIGS} >= {"ddp", "fsdp", "zero2", "zero3"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    cfg = load_config_from_file(str(path))
    assert cfg.num_machines >= 1 and cfg.num_processes >= 1 and cfg.machine_rank == 0
    assert cfg.mixed_precision in ("no", "bf16", "fp16")
    if cfg.distributed_type == DistributedType.FSDP:
        plugin = FullyShardedDataParallelPlugin(**{
            (k if k == "fsdp_version" else k.removeprefix("fsdp_")): v
            for k, v in cfg.fsdp_config.items()})
        assert plugin.fsdp_version == 2 and plugin.auto_wrap_policy is not None
    elif cfg.distributed_type == DistributedType.DEEPSPEED:
        known = {f.name for f in dataclasses.fields(DeepSpeedPlugin)}
        assert set(cfg.deepspeed_config) <= known, set(cfg.deepspeed_config) - known
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
    else:
        assert cfg.distributed_type == DistributedType.MULTI_GPU


def test_sharded_launch_on_a_cpu_is_refused(tmp_path, monkeypatch):
    assert sharding_refusal(True, {"ACCELERATE_USE_FSDP": "true"}) is None
    assert sharding_refusal(False, {}) is None
    assert "FSDP needs GPUs" in sharding_refusal(False, {"ACCELERATE_USE_FSDP": "true"})
    assert "DeepSpeed needs GPUs" in sharding_refusal(False, {"ACCELERATE_USE_DEEPSPEED": "True"})
    import torch

    if torch.cuda.is_available():
        return
    from zerosearch.train.config import load_train_config
    from zerosearch.train.run import build_trainer

    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": 1, "question": "Q?", "golden_answers": ["A"]}\n')
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "1", "contents": "\\"A\\"\\nA is a letter."}\n')
    cfg = load_train_config(None, {"model": {"name": "embedded:tiny-random"}, "data": {"train": str(qa)},
                                   "engine": {"kind": "bm25", "corpus": str(corpus), "topk": 1},
                                   "algorithm": {"num_generations": 2},
                                   "training": {"output_dir": str(tmp_path / "run"),
                                                "prompts_per_step": 1, "micro_batch_size": 2}})
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP needs GPUs"):
        build_trainer(cfg, log=lambda m: None)
