"""The RL training configuration: one dataclass per section, each field documented, mapped one to
one onto the YAML presets in ``configs/`` (sections ``model``, ``data``, ``engine``, ``rollout``,
``curriculum``, ``algorithm``, ``training``). Unknown keys fail before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zerosearch.config import ConfigError, from_dict, load_yaml
from zerosearch.curriculum import CurriculumConfig
from zerosearch.engines.factory import EngineConfig
from zerosearch.rollout import RolloutConfig

ALGORITHMS = ("grpo", "reinforce++", "ppo")


@dataclass
class ModelConfig:
    """The policy."""

    name: str = "embedded:smollm2-135m-instruct"
    """Policy model: embedded:…, hub id or local path."""
    dtype: str = "auto"
    """dtype the weights are trained in: auto (float32 master weights, and with them the optimizer
    state; ``training.bf16`` runs the matmuls in bf16), float32 or bfloat16 (bf16 weights)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights (peft)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Modules that get adapters."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the backward pass."""


@dataclass
class DataConfig:
    """Training questions."""

    train: str = ""
    """FlashRAG JSONL file or folder, ZeroSearch/Search-R1 parquet, or a hub id (online); required
    (every preset in ``configs/`` sets one; ``--train-data`` overrides it)."""
    limit: int | None = None
    """Use only the first N questions (quick runs)."""
    shuffle_seed: int = 0
    """Order of the questions (the sampler reshuffles each epoch with the training seed). With
    ``stratify_by`` it alone orders them (the shuffle within each group); ``training.seed`` does not."""
    stratify_by: str | None = None
    """A field of the question records (dotted: ``metadata.hops`` in the mini-world, ``data_source``
    in Search-R1 / ZeroSearch parquet). Set: the questions are read in stratified order
    (:func:`zerosearch.train.order.stratified_order`): every step holds at least its whole share of
    each group (with 59% 1-hop questions and 2 a step, at least one 1-hop question), the steps so far
    hold each group's share to within one question, the order is the same every epoch, and each
    rollout in ``rollouts.jsonl`` names its group. None: a plain shuffle."""


@dataclass
class AlgorithmConfig:
    """The RL algorithm and its loss."""

    name: str = "grpo"
    """grpo, reinforce++ or ppo."""
    loss_type: str = "grpo"
    """TRL loss aggregation for the policy term: grpo, dr_grpo, bnpo, dapo…"""
    num_generations: int = 5
    """Samples per question (the GRPO group; paper: 5). reinforce++/ppo use it as rollouts per question."""
    beta: float = 0.001
    """KL coefficient to the frozen reference (paper: 0.001). grpo: in the loss (k3 = low_var_kl);
    reinforce++/ppo: folded into the token rewards (k1), as those algorithms define it."""
    scale_rewards: str = "group"
    """grpo: group, batch or none."""
    epsilon: float = 0.2
    """Clip range of the policy ratio."""
    gamma: float = 1.0
    """Discount (reinforce++ returns, ppo GAE)."""
    lam: float = 1.0
    """GAE lambda (ppo)."""
    value_learning_rate: float = 1e-5
    """ppo: critic learning rate."""
    value_clip: float = 0.5
    """ppo: clip range of the value update."""
    value_epochs: int = 1
    """ppo: critic passes over each batch."""
    reward: str = "f1"
    """f1 (paper), em or cover_em."""
    resample_rounds: int = 0
    """Dynamic sampling for steps without a learning signal: when no question's rollouts in a
    step have rewards that differ (grpo, whose advantages are relative to the question's group;
    reinforce++ and ppo: when every rollout of the step scored the same, so that what moves the
    policy is the KL term or, for ppo, the critic's error, not the task's reward), the step draws as
    many fresh questions and rolls them out again, up to this many times, and trains on its last
    draw. Each draw costs a step's rollouts (and the reference model's pass over them when ``beta``
    is above 0). Every draw is logged (``rollouts.jsonl``'s ``draw``; of the step's metrics the
    times add up its draws, the token counts are the trained draw's, the rest average over every
    draw). Fresh questions come from one permutation of the training set per step, seeded by
    (seed, step), ignoring ``data.stratify_by``. 0: off, every step trains on its first draw (the
    paper)."""


@dataclass
class TrainingConfig:
    """Optimisation, checkpoints and logging."""

    output_dir: str = "runs/train"
    """Checkpoints, metrics.jsonl, TensorBoard logs."""
    max_steps: int = 203
    """Optimizer steps (paper: 203). The curriculum spans these steps."""
    prompts_per_step: int = 64
    """Questions per step (paper: 64); each gets num_generations rollouts."""
    micro_batch_size: int = 16
    """Rollouts per forward/backward pass (gradient accumulation fills the step); 0: each process's
    share of the step in one pass, whatever the step's size."""
    learning_rate: float = 1e-6
    """Policy learning rate (paper: 1e-6)."""
    warmup_ratio: float = 0.0
    """Linear warm-up: a fraction of max_steps (< 1) or a number of steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 0
    """Seed for sampling, data order, noise draws."""
    save_steps: int = 50
    """Checkpoint every N steps (and at the end)."""
    save_total_limit: int | None = 3
    """Keep at most this many checkpoints."""
    logging_steps: int = 1
    """Log metrics every N steps."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """tensorboard, wandb, trackio, or [] (metrics.jsonl is always written)."""
    bf16: bool | Literal["auto"] = "auto"
    """bf16 autocast for the optimisation's forward passes (policy and reference): matmuls in bf16,
    reductions and the loss in fp32, the weights and the optimizer state in ``model.dtype``. auto:
    on where bf16 is native (GPUs; CPUs with AMX or AVX512-BF16), off elsewhere; true is refused
    where bf16 would be emulated (slower than fp32). Decided by
    :func:`zerosearch.hardware.runtime_choices`."""
    compile: bool | Literal["auto"] = False
    """``torch.compile`` the decoder layers of the training and reference forward passes (inductor
    fuses each layer's norms, rotary embeddings, activations and residual adds; needs a C/C++
    compiler on CPUs). The first micro-batches pay for compiling; generation and saving use the
    plain layers (measurements: ``docs/performance.md``). Only on
    the plain LM-head path (``fused_lm_head`` off, a bias-free head, one process), without
    gradient checkpointing: true refuses to start otherwise, naming the reason; auto logs the reason
    and trains uncompiled (the CPU preset's setting). Off by default: tests and short runs would
    pay the compile time."""
    generation_dtype: str = "auto"
    """dtype of the HF rollouts: auto, float32 or bfloat16. A dtype other than the policy's
    generates from a copy of the weights in that dtype, refreshed in place before every rollout (one
    more model in memory); the loss still scores the sampled tokens with the policy, so the rollouts
    are slightly off-policy, as bf16 vLLM rollouts are on GPUs. auto: bf16 for an fp32 policy where
    bf16 runs natively (GPUs; CPUs with AMX or AVX512-BF16, where the copy also decodes through
    ``zerosearch.cpu.decode_step``), the policy's own dtype elsewhere; float32 for exactly
    on-policy rollouts. Ignored with vLLM."""
    use_vllm: bool = False
    """Generate rollouts with TRL's vLLM integration."""
    vllm_mode: str = "colocate"
    """colocate (same GPUs) or server (trl vllm-serve)."""
    vllm_server_base_url: str | None = None
    """URL of `trl vllm-serve` in server mode."""
    vllm_gpu_memory_utilization: float = 0.3
    """colocate: GPU memory fraction for vLLM."""
    group_by_length: bool = True
    """Split each generation batch into micro-batches of similar length (less padding). The
    gradient is unchanged for grpo, dr_grpo and dapo; bnpo weighs tokens per micro-batch."""
    fused_lm_head: bool | Literal["auto"] = "auto"
    """TRL's tiled LM head (saves memory with large vocabularies on GPUs; slower on a CPU than the
    plain head). auto: on GPUs, off on CPUs."""
    cpu_tuning: bool = False
    """Process-wide CPU memory tuning for long runs (:mod:`zerosearch.cpu`): glibc's malloc keeps
    freed memory for the next step, and a callback hands it back when the machine runs short. The
    CPU preset and the quickstart turn it on; never applied on a GPU."""
    generation_batch_size: int = 64
    """HF generate: most rows decoded together."""
    log_completions: bool = False
    """Print sample completions each logging step."""
    mask_inserted_tokens: bool = True
    """Leave the tokens the rollout inserted (``<information>`` blocks from the engine) out of the
    loss, as the paper does: the policy is trained only on what it wrote. False trains on them too
    (the loss-masking ablation; the paper reports masking helps)."""


GENERATION_DTYPES = ("auto", "float32", "bfloat16")
"""The values of ``TrainingConfig.generation_dtype``."""


@dataclass
class TrainConfig:
    """Everything ``zerosearch train`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Turn and token budgets; its ``topk`` always follows ``engine.topk`` (set documents per search
    there, once)."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> None:
        """Checks that need more than one section; raise ConfigError naming the problem."""
        a, t = self.algorithm, self.training
        if a.name not in ALGORITHMS:
            raise ConfigError(f"algorithm.name {a.name!r} is not one of {', '.join(ALGORITHMS)}")
        if a.reward not in ("f1", "em", "cover_em"):
            raise ConfigError(f"algorithm.reward {a.reward!r} is not one of f1, em, cover_em")
        if a.resample_rounds < 0:
            raise ConfigError(f"algorithm.resample_rounds must be >= 0 (0: off), got {a.resample_rounds}")
        if a.num_generations < 1 or (a.name == "grpo" and a.num_generations < 2):
            raise ConfigError("algorithm.num_generations must be >= 2 for grpo (a group) and >= 1 otherwise")
        if t.max_steps < 1:
            raise ConfigError("training.max_steps must be >= 1")
        if t.generation_dtype not in GENERATION_DTYPES:
            raise ConfigError(f"training.generation_dtype {t.generation_dtype!r} is not one of "
                              f"{', '.join(GENERATION_DTYPES)}")
        rollouts = t.prompts_per_step * a.num_generations
        if t.micro_batch_size < 0:
            raise ConfigError(f"training.micro_batch_size must be >= 0 (0: the whole step), got {t.micro_batch_size}")
        if t.micro_batch_size and rollouts % t.micro_batch_size:
            raise ConfigError(f"training.micro_batch_size ({t.micro_batch_size}) must divide "
                              f"prompts_per_step x num_generations ({rollouts})")
        if self.rollout.topk != self.engine.topk:
            self.rollout.topk = self.engine.topk


def load_train_config(path: str | Path | None, overrides: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
    """Read a YAML preset (or defaults), apply ``{section: {field: value}}`` overrides, validate."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    if isinstance(data.get("rollout"), dict) and "topk" in data["rollout"]:
        raise ConfigError(f"{path}: rollout.topk is taken from engine.topk; set documents per search "
                          "there (engine: topk: N) or with --topk")
    for section, values in (overrides or {}).items():
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        data[section].update({k: v for k, v in values.items() if v is not None})
    cfg = from_dict(TrainConfig, data)
    cfg.validate()
    return cfg
