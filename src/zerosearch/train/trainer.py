"""ZeroSearch on TRL: ``GRPOTrainer`` with our multi-turn rollout and, for REINFORCE++ and PPO,
token-level advantages.

What the subclass adds to TRL, and why:

- ``rollout_func`` runs :func:`zerosearch.rollout.run_rollouts` with the live policy. TRL hands it
  only the prompts, so ``_generate_and_score_completions`` first records the rows themselves
  (question, every gold answer, id): each search is simulated with its own row's context.
- The curriculum reads ``state.global_step`` / ``state.max_steps``; useful/noisy draws use a
  generator seeded by (seed, step, process), so a resumed run repeats them.
- ``reinforce++``: token rewards = sequence score on the last policy token minus ``beta * k1`` KL
  on every policy token, returns-to-go, batch whitening. ``ppo``: the same token rewards, a value
  model (a token-classification head on the policy's backbone), GAE, a clipped value loss. Both hand
  TRL ``(B, T)`` advantages, which its clipped policy loss accepts as is. The KL enters once, as a
  reward: ``beta`` is on while TRL scores the batch (so it computes reference log-probs) and off in
  the loss.
- Per-step metrics: noise probability, EM/F1, searches and turns per question, valid-action and
  truncation rates, useful/noisy searches, search errors, and time spent generating and searching;
  and one line per rollout in ``rollouts.jsonl`` (reward, searches, group) to split them after the run.
- Dynamic sampling (``algorithm.resample_rounds``): a step whose rollouts carry no learning signal
  (every group scored alike) draws fresh questions and rolls out again before it trains.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from trl import GRPOTrainer

from zerosearch.engines.base import Engine
from zerosearch.jsonl import append
from zerosearch.rewards import exact_match, f1_score, get_metric
from zerosearch.rollout import RolloutTimings, Row
from zerosearch.runfolder import AtomicCheckpoints
from zerosearch.train.advantages import gae, masked_whiten, reinforce_pp_advantages, token_rewards
from zerosearch.train.config import GENERATION_DTYPES, TrainConfig
from zerosearch.train.logps import plain_token_logps, reorder_rows, trim_columns


def make_reward_func(name: str):
    """A TRL reward function scoring the rollout's extracted answer against every gold answer."""
    metric = get_metric(name)

    def reward(prompts, completions, zs_answer, golden_answers, **_: Any) -> list[float]:
        return [metric(a, g) for a, g in zip(zs_answer, golden_answers)]

    reward.__name__ = name
    return reward


class ZeroSearchTrainer(AtomicCheckpoints, GRPOTrainer):
    """GRPO / REINFORCE++ / PPO with search rollouts (see the module docstring)."""

    def __init__(self, *args, zs_config: TrainConfig, engine: Engine, value_model=None, **kwargs):
        self.zs = zs_config
        self.engine = engine
        self.timings = RolloutTimings()
        self._rows: list[Row] = []
        self._draw = 0  # which draw of the current step is rolling out (algorithm.resample_rounds)
        self._step_stats: dict[str, float] = {}  # time/ and tokens/ metrics of the step's draws so far
        self._groups: list[str] | None = None
        self._gen_copy = None  # the policy in training.generation_dtype, when that differs
        self._algo = zs_config.algorithm.name
        self.autocast_bf16 = bool(zs_config.training.bf16)
        """bf16 autocast in the log-prob forward passes (``training.bf16`` as resolved by
        :func:`zerosearch.train.run.run_choices`); read at every forward, so it can be switched."""
        super().__init__(*args, rollout_func=self._rollout, **kwargs)
        self._kl_beta = self.beta
        if self._algo != "grpo":
            self.beta = 0.0  # the KL goes into the token rewards, not the loss (see _generate_and_score)
        self.value_model, self._value_opt = value_model, None
        if value_model is not None:
            self._value_opt = torch.optim.AdamW(value_model.parameters(),
                                                lr=zs_config.algorithm.value_learning_rate)
            self.value_model, self._value_opt = self.accelerator.prepare(value_model, self._value_opt)

    # -- rollouts -----------------------------------------------------------------------------
    def noise_probability(self) -> float | None:
        """The curriculum's value at the current step (None for real engines)."""
        if self.zs.engine.kind != "simulated":
            return None
        return self.zs.curriculum.at(self.state.global_step, self.state.max_steps)

    def _generator(self, model):
        if self.use_vllm:
            from zerosearch.generation.trl_vllm import TRLVLLMGenerator

            return TRLVLLMGenerator(self)
        from zerosearch.generation.hf import HFGenerator, generation_copy

        dtype = generation_dtype(self.zs.training.generation_dtype, model)
        if dtype is not None:
            self._gen_copy = model = generation_copy(model, dtype, self._gen_copy)
        return HFGenerator(model, self.processing_class, self.zs.training.generation_batch_size)

    def _step_seed(self) -> int:
        """(training seed, step): the root of a step's rollout seeds and of its redraws' questions."""
        return self.zs.training.seed * 1_000_003 + self.state.global_step

    def _rollout(self, prompts: list, trainer) -> dict[str, Any]:
        from zerosearch.integrations.trl_rollout import trainer_rollouts, trl_output

        rows = self._rows
        if len(rows) != len(prompts):
            raise RuntimeError(f"rollout got {len(prompts)} prompts for {len(rows)} rows")
        noise = self.noise_probability()
        seed = self._step_seed() * 1009 + self.accelerator.process_index
        seed += self._draw * 1_000_000_007  # a redraw of the step (resample_rounds) samples afresh
        timings = RolloutTimings()
        trajs = trainer_rollouts(self, rows, self.engine, self.zs.rollout, noise_prob=noise,
                                 seed=seed, make_generator=self._generator, timings=timings)
        self.timings.generation_s += timings.generation_s
        self.timings.search_s += timings.search_s
        metric = get_metric(self.zs.algorithm.reward)
        scores = [metric(t.answer, t.row.golden_answers) for t in trajs]
        self._scores = torch.tensor(scores)
        self._log_rollouts(trajs, noise, timings)
        self._append_rollouts(trajs, scores, noise)
        if self.accelerator.num_processes > 1:
            self._log_process_batch(trajs, noise, seed)
        return trl_output(trajs, self.processing_class, mask_inserted=self.zs.training.mask_inserted_tokens)

    def _append_rollouts(self, trajs, rewards: list[float], noise: float | None) -> None:
        """One line per rollout in ``<output_dir>/rollouts.jsonl`` (``rollouts-rank-<i>.jsonl`` per
        process when there are several): step, draw (0, or the redraw with ``resample_rounds``; a
        step trains on its last), question id, its ``data.stratify_by`` group, reward, EM, whether
        it answered, searches (useful / noisy) and the answer, so a step's reward can be split by
        question kind (hop count, data source) after the run. ``rewards``: the draw's scores, one
        per rollout."""
        rank = self.accelerator.process_index
        name = "rollouts.jsonl" if self.accelerator.num_processes == 1 else f"rollouts-rank-{rank}.jsonl"
        step = self.state.global_step + 1  # the step these rollouts train (metrics.jsonl's number)
        records = []
        for traj, reward, group in zip(trajs, rewards, self._groups or [None] * len(trajs)):
            record = {"step": step, "draw": self._draw, "id": str(traj.row.id), "reward": reward,
                      "em": exact_match(traj.answer, traj.row.golden_answers),
                      "answered": traj.answer is not None, "searches": traj.searches,
                      "useful_searches": traj.useful_searches, "noisy_searches": traj.noisy_searches,
                      "noise_prob": noise, "answer": traj.answer}
            if group is not None:
                record["group"] = group
            records.append(record)
        os.makedirs(self.args.output_dir, exist_ok=True)
        append(os.path.join(self.args.output_dir, name), records)

    def _log_process_batch(self, trajs, noise: float | None, seed: int) -> None:
        """Multi-process runs: each process appends what it rolled out to
        ``<output_dir>/processes/rank-<i>.jsonl`` (step, curriculum value, rows), so one can check
        that every process ran the same step with the same noise and that their slices make up
        the global batch."""
        folder = os.path.join(self.args.output_dir, "processes")
        os.makedirs(folder, exist_ok=True)
        record = {"step": self.state.global_step, "draw": self._draw, "process": self.accelerator.process_index,
                  "processes": self.accelerator.num_processes, "noise_prob": noise, "seed": seed,
                  "rows": [str(t.row.id) for t in trajs]}
        with open(os.path.join(folder, f"rank-{self.accelerator.process_index}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def _log_rollouts(self, trajs, noise: float | None, timings: RolloutTimings) -> None:
        n = max(len(trajs), 1)
        searches = sum(t.searches for t in trajs)
        stats = {
            "zerosearch/f1": sum(f1_score(t.answer, t.row.golden_answers) for t in trajs) / n,
            "zerosearch/em": sum(exact_match(t.answer, t.row.golden_answers) for t in trajs) / n,
            "zerosearch/answered": sum(t.answer is not None for t in trajs) / n,
            "zerosearch/searches_per_question": searches / n,
            "zerosearch/turns": sum(t.turns for t in trajs) / n,
            "zerosearch/valid_action_rate": sum(t.valid_actions for t in trajs)
            / max(sum(t.turns for t in trajs), 1),
            "zerosearch/truncation_rate": sum(t.truncated is not None for t in trajs) / n,
            "zerosearch/useful_searches": sum(t.useful_searches for t in trajs),
            "zerosearch/noisy_searches": sum(t.noisy_searches for t in trajs),
            "zerosearch/search_errors": sum(t.search_errors for t in trajs),
            "zerosearch/response_tokens": sum(sum(t.env_mask) for t in trajs) / n,
            "tokens/prompt": sum(len(t.prompt_ids) for t in trajs),
            "tokens/completion": sum(len(t.completion_ids) for t in trajs),
            "tokens/generated": sum(sum(t.env_mask) for t in trajs),
            # sum of squared row lengths: the training forward's attention work (causal: about
            # 2 * layers * hidden * L^2 FLOPs a row), for MFU accounting
            "tokens/length_sq": sum((len(t.prompt_ids) + len(t.completion_ids)) ** 2 for t in trajs),
            "time/generation_s": timings.generation_s,
            "time/search_s": timings.search_s,
        }
        if noise is not None:  # a real engine has no noise: no key (a NaN makes TensorBoard warn)
            stats["zerosearch/noise_prob"] = noise
        mode = "train" if self.model.training else "eval"
        for key, value in stats.items():
            if key.startswith("time/"):  # once a step: summed over its draws
                self._step_stats[key] = self._step_stats.get(key, 0.0) + value
            elif key.startswith("tokens/"):  # once a step: the draw it trains on (its last)
                self._step_stats[key] = value
            else:
                self._metrics[mode][key].append(float(value))

    def _flush_step_stats(self) -> None:
        """Log the step's time totals (summed over its draws) and token counts (of the draw it
        trains on, which the optimisation's throughput is measured over). The other rollout
        metrics (EM, F1, searches, TRL's reward) average over every draw: samples of the policy
        like any other rollout."""
        mode = "train" if self.model.training else "eval"
        for key, value in self._step_stats.items():
            self._metrics[mode][key].append(float(value))
        self._step_stats = {}

    # -- scoring and advantages ---------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._draw, self._step_stats = 0, {}
        out = self._score_draw(inputs)
        rounds = self.zs.algorithm.resample_rounds if self.model.training else 0
        while self._draw < rounds and not self._has_signal():
            self._draw += 1
            inputs = self._fresh_inputs(len(inputs))
            out = self._score_draw(inputs)
        if rounds:
            self._metrics["train"]["zerosearch/redraws"].append(float(self._draw))
        self._flush_step_stats()
        return out if self._algo == "grpo" else self._token_level_advantages(out)

    def _has_signal(self) -> bool:
        """Whether the draw just scored can move the policy: for grpo some question's rollouts
        scored differently (its advantages are relative to the group), otherwise some rollout of
        the step scored differently from another. Decided on the global batch, so every process
        agrees (TRL lays a group's rollouts side by side, processes' slices in rank order)."""
        scores = self._scores.to(self.accelerator.device, torch.float32)
        if self.accelerator.num_processes > 1:
            scores = self.accelerator.gather(scores)
        groups = scores.view(-1, self.num_generations) if self._algo == "grpo" else scores.view(1, -1)
        return bool(((groups.max(1).values - groups.min(1).values) > 1e-6).any())

    def _fresh_inputs(self, local: int) -> list[dict[str, Any]]:
        """This process's slice of a fresh draw for the current step: the global batch's number of
        questions from the training set, each repeated ``num_generations`` times. One permutation
        per step, seeded by (seed, step), and draw d takes its d-th slice, so a step's redraws
        never repeat a question (while the set holds enough), every process draws the same and a
        resumed run repeats it."""
        n_proc, g = self.accelerator.num_processes, self.num_generations
        questions = local * n_proc // g
        gen = torch.Generator().manual_seed(self._step_seed())
        size = len(self.train_dataset)
        order = torch.randperm(size, generator=gen).tolist()
        start = (self._draw - 1) * questions
        picks = [order[(start + i) % size] for i in range(questions)]
        rows = [self.train_dataset[i] for i in picks for _ in range(g)]
        rank = self.accelerator.process_index
        return rows[rank * local:(rank + 1) * local]

    def _score_draw(self, inputs):
        """TRL's rollouts and scoring of one draw of questions (for reinforce++ and ppo with the
        reference log-probs their token rewards need; their advantages, and ppo's critic update,
        come after the step's last draw)."""
        self._rows = [Row(x["question"], list(x["golden_answers"]), x.get("id")) for x in inputs]
        self._groups = [x["group"] for x in inputs] if inputs and "group" in inputs[0] else None
        if self._algo == "grpo":
            return super()._generate_and_score_completions(inputs)
        self.beta = self._kl_beta  # make TRL compute reference log-probs for this batch
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self.beta = 0.0

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every process (whitening over the global batch)."""
        return self.accelerator.reduce(t, "sum") if self.accelerator.num_processes > 1 else t

    @torch.no_grad()
    def _old_and_ref_logps(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        keep = out["completion_ids"].size(1)
        old = out.get("old_per_token_logps")
        if old is None:
            old, _, _ = self._get_per_token_logps_and_entropies(self.model, ids, attn, keep)
        ref = out.get("ref_per_token_logps")
        if ref is None:  # beta == 0: no KL term
            ref = old
        return old, ref

    def _token_level_advantages(self, out):
        device = out["completion_ids"].device
        mask = out["completion_mask"] * out.get("tool_mask", torch.ones_like(out["completion_mask"]))
        scores = self._scores.to(device)
        old, ref = self._old_and_ref_logps(out)
        kl = (old - ref) * mask  # k1, as REINFORCE++/PPO put it in the reward
        a = self.zs.algorithm
        if self._algo == "reinforce++":
            out["advantages"] = reinforce_pp_advantages(scores, kl, mask, self._kl_beta, a.gamma,
                                                        all_sum=self._all_sum)
        else:
            rewards = token_rewards(scores, kl, mask, self._kl_beta)
            values = self._values(out)
            adv, returns = gae(rewards, values, mask, a.gamma, a.lam)
            out["advantages"] = masked_whiten(adv, mask, all_sum=self._all_sum)
            self._update_critic(out, values, returns, mask)
        self._metrics["train"]["zerosearch/kl"].append(
            ((kl * mask).sum() / mask.sum().clamp(min=1)).item())
        return out

    # -- micro-batches ------------------------------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        """TRL's buffering of one generation batch into micro-batches, ordered by length.

        TRL shuffles rows before splitting; grouping rows of similar length instead cuts the
        padding each micro-batch pays for (see ``training.group_by_length``).
        """
        if not (self.model.training and self.zs.training.group_by_length) or any(
                k in generation_batch for k in ("pixel_values", "image_grid_thw")):
            return super()._prepare_inputs(generation_batch)
        from trl.trainer.utils import split_tensor_dict

        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            lengths = batch["prompt_mask"].sum(1) + batch["completion_mask"].sum(1)
            batch = reorder_rows(batch, torch.argsort(lengths, stable=True))
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # -- forward passes -----------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False,
                                           compute_aux_loss=False, **multimodal):
        """TRL's forward, per chunk of rows of similar length, each row packed without padding
        (:func:`zerosearch.train.logps.compact_rows`; the fused LM head path trims the chunk's padded columns instead)."""
        parent = super()._get_per_token_logps_and_entropies
        if compute_aux_loss or any(v is not None for v in multimodal.values()):
            return parent(model, input_ids, attention_mask, logits_to_keep, batch_size,
                          compute_entropy, compute_aux_loss, **multimodal)
        batch_size = batch_size or input_ids.size(0)
        # rows of similar length share a chunk (the reference pass sees the batch in rollout order)
        order = torch.argsort(attention_mask.sum(1), stable=True)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = order[start:start + batch_size]
            ids, attn = input_ids[rows], attention_mask[rows]
            if self.zs.training.fused_lm_head:
                first, last, keep = trim_columns(attn, logits_to_keep)
                with self.optimisation_autocast():
                    lp, ent, _ = parent(model, ids[:, first:last], attn[:, first:last], keep,
                                        compute_entropy=compute_entropy)
                pad = logits_to_keep - keep
                lp = torch.nn.functional.pad(lp, (0, pad))
                ent = torch.nn.functional.pad(ent, (0, pad)) if compute_entropy else None
            else:
                with self.optimisation_autocast():
                    lp, ent = plain_token_logps(
                        model, ids, attn, logits_to_keep, self.temperature, compute_entropy,
                        entropy_grad=getattr(self, "_entropy_bonus_enabled", True),
                        compile_layers=self.zs.training.compile)
            logps.append(lp)
            if compute_entropy:
                entropies.append(ent)
        back = torch.argsort(order)
        return (torch.cat(logps)[back], torch.cat(entropies)[back] if compute_entropy else None,
                None)

    def optimisation_autocast(self):
        """bf16 autocast on the model's device while :attr:`autocast_bf16`, else a no-op (the
        plain LM-head path calls the decoder directly, past any autocast wrapped around the
        model's forward, so it needs its own)."""
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    # -- PPO critic ---------------------------------------------------------------------------
    def _value_forward(self, out, grad: bool) -> torch.Tensor:
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        p, c = out["prompt_ids"].size(1), out["completion_ids"].size(1)
        with torch.set_grad_enabled(grad):
            logits = self.value_model(input_ids=ids, attention_mask=attn).logits[..., 0]
        return logits[:, p - 1: p - 1 + c]  # V(state before each completion token)

    def _values(self, out) -> torch.Tensor:
        self.value_model.eval()
        return self._value_forward(out, grad=False).float()

    def _update_critic(self, out, old_values, returns, mask) -> None:
        clip = self.zs.algorithm.value_clip
        self.value_model.train()
        m = mask.float()
        for _ in range(self.zs.algorithm.value_epochs):
            values = self._value_forward(out, grad=True).float()
            clipped = old_values + (values - old_values).clamp(-clip, clip)
            loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
            loss = (loss * m).sum() / m.sum().clamp(min=1)
            self._value_opt.zero_grad()
            self.accelerator.backward(loss)
            self._value_opt.step()
        self._metrics["train"]["zerosearch/value_loss"].append(loss.item())

    def save_checkpoint_extras(self, folder: str) -> None:
        """The critic and its optimizer go into the staged checkpoint (PPO)."""
        if self.value_model is not None and self.accelerator.is_main_process:
            path = os.path.join(folder, "value")
            os.makedirs(path, exist_ok=True)
            self.accelerator.unwrap_model(self.value_model).save_pretrained(path)
            torch.save(self._value_opt.state_dict(), os.path.join(path, "optimizer.pt"))

    def load_value_checkpoint(self, checkpoint: str) -> None:
        """Restore the critic and its optimizer saved beside a policy checkpoint."""
        path = os.path.join(checkpoint, "value")
        if self.value_model is None or not os.path.isdir(path):
            return
        from safetensors.torch import load_file

        weights = os.path.join(path, "model.safetensors")
        self.accelerator.unwrap_model(self.value_model).load_state_dict(load_file(weights))
        self._value_opt.load_state_dict(torch.load(os.path.join(path, "optimizer.pt")))


def generation_dtype(setting: str, model) -> torch.dtype | None:
    """The dtype rollouts run in when it differs from ``model``'s (see
    ``TrainingConfig.generation_dtype``); None = generate with the model itself. ``auto``: bf16 for
    an fp32 policy on hardware with native bf16 (:func:`zerosearch.hardware.runtime_choices`), the
    policy's own dtype otherwise."""
    from zerosearch.hardware import inference_dtype

    if setting not in GENERATION_DTYPES:
        raise ValueError(f"training.generation_dtype {setting!r} is not one of "
                         f"{', '.join(GENERATION_DTYPES)}")
    first = next(model.parameters())
    current = first.dtype
    if setting == "auto":
        wanted = inference_dtype(first.device.type) if current == torch.float32 else current
    else:
        wanted = getattr(torch, setting)
    return None if wanted == current else wanted


class StepTimer:
    """Splits each step's wall time into generation, search wait and optimisation (logged)."""

    def __init__(self, trainer: ZeroSearchTrainer):
        self.trainer, self._start, self._gen0, self._search0 = trainer, 0.0, 0.0, 0.0

    def on_step_begin(self) -> None:
        self._start = time.perf_counter()
        self._gen0, self._search0 = self.trainer.timings.generation_s, self.trainer.timings.search_s

    def on_step_end(self) -> None:
        total = time.perf_counter() - self._start
        gen = self.trainer.timings.generation_s - self._gen0
        search = self.trainer.timings.search_s - self._search0
        metrics = self.trainer._metrics["train"]
        metrics["time/step_s"].append(total)
        metrics["time/optimisation_s"].append(max(total - gen - search, 0.0))
