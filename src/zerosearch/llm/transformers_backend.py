"""An in-process transformers chat back end that batches concurrent requests.

Callers from many threads (HTTP handlers, engine batches) submit conversations; one worker thread
takes whatever is waiting (up to ``max_batch_size``, after waiting ``batch_wait_s`` for company),
generates for the whole batch at once (:class:`zerosearch.generation.kv.KVDecoder` for plain
full-attention decoders: in-place KV cache, a finished document set leaves the batch at once; else a
left-padded ``generate``), and hands each caller its text. This is what
lets ``zerosearch serve --engine simulated --model embedded:smollm2-135m-instruct`` work on a CPU
with no other server running, and keeps throughput high when many clients search at once.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Sequence

from zerosearch import retry
from zerosearch.llm.base import Completion, GenerationParams, Message
from zerosearch.models import resolve_model


def load_causal_lm(model: str, device: str = "cpu", dtype: str = "auto"):
    """Load (tokenizer, model) for generation; ``dtype`` auto = bf16 where the hardware runs it
    natively (CUDA, CPUs with AMX / AVX512-BF16), fp32 elsewhere."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerosearch.hardware import inference_dtype

    path = resolve_model(model)
    if dtype == "auto":
        torch_dtype = inference_dtype(device)
    elif dtype in ("float32", "bfloat16", "float16"):
        torch_dtype = getattr(torch, dtype)
    else:
        raise ValueError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    return tokenizer, lm


class TransformersBackend:
    """Batched chat generation with a local model."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto",
                 max_batch_size: int = 32, batch_wait_s: float = 0.01, timeout_s: float = 600.0,
                 seed: int | None = None):
        import torch

        from zerosearch.generation.kv import KVDecoder, supports

        self.model_name = model
        self.device = device
        self.tokenizer, self.lm = load_causal_lm(model, device, dtype)
        self.decoder = KVDecoder(self.lm, self.tokenizer, max_rows=max_batch_size) if supports(
            self.lm) else None
        self.max_batch_size, self.batch_wait_s, self.timeout_s = max_batch_size, batch_wait_s, timeout_s
        self._torch = torch
        if seed is not None:
            torch.manual_seed(seed)
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="transformers-backend", daemon=True)
        self._worker.start()

    # -- worker side --------------------------------------------------------------------------
    def _take_batch(self) -> list:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:
                self._stop.set()
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                return
            # One generate call per distinct sampling setting in the batch.
            groups: dict[tuple, list] = {}
            # Items are (messages, params, future, avoid). A caller that timed out cancelled its
            # future: skip it instead of generating for nobody.
            for item in (i for i in batch if i[2].set_running_or_notify_cancel()):
                params: GenerationParams = item[1]
                key = (params.max_new_tokens, params.temperature, params.top_p)
                groups.setdefault(key, []).append(item)
            for items in groups.values():
                self._generate_group(items)

    def _generate_group(self, items: list) -> None:
        """Generate for one group and resolve its futures. If the group fails, each row is tried
        alone, so one bad row (text its tokenizer refuses) fails only its own caller; the worker
        stays alive either way."""
        try:
            texts = self.generate([m for m, _, _, _ in items], items[0][1],
                                  [a for _, _, _, a in items])
            for (_, _, future, _), text in zip(items, texts):
                future.set_result(text)
        except Exception as err:  # noqa: BLE001 - reported to the callers
            if len(items) > 1:
                for item in items:
                    self._generate_group([item])
                return
            for _, _, future, _ in items:
                if not future.done():
                    future.set_exception(err)

    def generate(self, conversations: Sequence[list[Message]], params: GenerationParams,
                 avoid: Sequence[Sequence[str]] | None = None) -> list[str]:
        """Generate synchronously for a batch (the worker's job; also usable directly). ``avoid``:
        per conversation, strings its output must not spell (see :meth:`KVDecoder.generate`; the
        ``generate`` fallback bans only their canonical token sequences)."""
        from zerosearch.generation.guard import Guard, GuardProcessor

        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        avoid = avoid if avoid is not None and any(avoid) else None
        if self.decoder is not None:
            ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            try:
                out = self.decoder.generate(ids, params.max_new_tokens, params.temperature,
                                            params.top_p, avoid)
            finally:
                self.decoder.reset()  # nothing is kept between batches
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        sample = params.temperature > 0
        processors = None
        if avoid is not None:
            from transformers import LogitsProcessorList

            guards = [Guard.build(self.tokenizer, strings) for strings in avoid]
            processors = LogitsProcessorList([GuardProcessor(guards, enc["input_ids"].shape[1])])
        with self._torch.inference_mode():
            out = self.lm.generate(
                **enc, max_new_tokens=params.max_new_tokens, do_sample=sample,
                temperature=params.temperature if sample else None,
                top_p=params.top_p if sample else None, top_k=0 if sample else None,
                pad_token_id=self.tokenizer.pad_token_id, logits_processor=processors)
        new = out[:, enc["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    # -- caller side --------------------------------------------------------------------------
    def chat(self, conversations: Sequence[list[Message]], params: GenerationParams,
             avoid: Sequence[Sequence[str]] | None = None) -> list[Completion]:
        if self._stop.is_set() or not self._worker.is_alive():
            return [Completion(None, "the in-process model has been shut down", "unavailable")
                    for _ in conversations]
        if avoid is not None and len(avoid) != len(conversations):
            raise ValueError(f"{len(avoid)} avoid lists for {len(conversations)} conversations")
        started = time.perf_counter()
        # the search service's deadline for this call (if any) bounds the wait too; a caller that
        # gave up cancels its rows, and the worker skips a cancelled row it has not started
        call = retry.current()
        timeout_s = min(self.timeout_s, call.remaining()) if call is not None else self.timeout_s
        futures = []
        for i, conversation in enumerate(conversations):
            future: Future = Future()
            self._queue.put((conversation, params, future, list(avoid[i]) if avoid else []))
            futures.append(future)
        results = []
        deadline = started + timeout_s
        for future in futures:
            try:
                text = future.result(timeout=max(deadline - time.perf_counter(), 0))
                results.append(Completion(text, latency_s=time.perf_counter() - started))
            except FutureTimeout:
                future.cancel()
                results.append(Completion(None, f"generation took longer than {timeout_s:.3g}s",
                                          "timeout", latency_s=time.perf_counter() - started))
            except Exception as err:
                results.append(Completion(None, f"generation failed: {err!r}", "internal",
                                          latency_s=time.perf_counter() - started))
        return results

    def describe(self) -> dict:
        return {"backend": "transformers", "model": self.model_name, "device": self.device,
                "max_batch_size": self.max_batch_size}

    def close(self) -> None:
        """Stop the worker and wait for it (a live torch thread at interpreter exit aborts it)."""
        self._stop.set()
        self._queue.put(None)
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=self.timeout_s)
