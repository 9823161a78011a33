"""Batched sampling for multi-turn rollouts: a KV cache kept in place, across turns.

transformers' ``generate`` spends much of a search rollout on work nobody needs:
- its dynamic KV cache grows by concatenation, so every decoding step copies the whole cache;
- a row that has stopped keeps its batch slot until the longest row of the turn stops;
- every turn starts from scratch and reads the whole context again (prompt, earlier turns, documents);
- the ``num_generations`` rollouts of one question read the same prompt once each;
- every question of a batch reads the same instruction template again.

``KVDecoder`` removes all five. Each layer's keys and values live in a preallocated buffer
(``BufferLayer``) that a step writes one column of; a row that stops is swapped out of the active
block at once (one row copied); its cache is kept, and the next ``generate`` call reuses the longest
cached prefix of each new context, so a turn only reads what the environment inserted; identical
contexts are read once and their cache copied, and the prefix all of a call's contexts share is read
once, in a row of its own, and preloaded into every row. Positions are each row's own token
positions, so a cached row can sit at any offset of the next turn's batch.

Only plain decoder models whose every layer uses full attention qualify (``supports``); the
generator falls back to ``generate`` for the rest. Sampling is softmax sampling at ``temperature``
over the whole vocabulary, with nucleus ``top_p`` (greedy at temperature 0): the policy's own
distribution, which the trainer's log-probabilities assume. (transformers' ``generate`` adds top-k 50
whenever ``top_k`` is left unset; our fallbacks pass ``top_k=0`` so both paths sample alike.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from zerosearch.cpu import decode_step
from zerosearch.generation.guard import Guard, apply_guards

_MIN_REUSE = 8
"""Shortest cached prefix worth reusing (tokens)."""
_MIN_SHARED = 32
"""Shortest prefix common to a call's contexts that is read once for all of them (tokens)."""
_STOP_TAIL = 24
"""Generated tokens decoded to look for a stop string (stop strings are a few characters long)."""


def supports(model) -> bool:
    """True when every layer of ``model`` keeps a plain full-attention KV cache."""
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - any model transformers cannot describe goes to generate()
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _device_type(model) -> str:
    """The device type (``cpu``, ``cuda``...) of ``model``'s weights."""
    return next(model.parameters()).device.type


class BufferLayer(DynamicLayer):
    """One layer's cache in a zeroed buffer ``(rows, heads, capacity, head_dim)``.

    ``update`` writes the new columns in place and returns views of the first ``rows`` rows and the
    filled columns: no step copies the past. The buffer is allocated on first use, with the shape
    and dtype of the model's keys. Columns never written stay zero (finite) and are masked.
    """

    def __init__(self, rows: int, capacity: int):
        super().__init__()
        self.rows, self.capacity, self.length = rows, capacity, 0
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None

    def allocate(self, like: torch.Tensor) -> None:
        heads, dim = like.shape[-3], like.shape[-1]
        shape = (self.rows, heads, self.capacity, dim)
        self.buf_k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.buf_v = torch.zeros_like(self.buf_k)
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True

    def preload(self, row: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Copy a saved ``(heads, n, dim)`` cache into ``row`` from column ``start``."""
        if self.buf_k is None:
            self.allocate(keys)
        self.buf_k[row, :, start:start + keys.shape[-2]] = keys
        self.buf_v[row, :, start:start + values.shape[-2]] = values

    def _views(self) -> None:
        self.keys = self.buf_k[:self.rows, :, :self.length]
        self.values = self.buf_v[:self.rows, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if self.buf_k is None:
            self.allocate(key_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV buffer full: {end} > {self.capacity} columns")
        self.buf_k[:self.rows, :, self.length:end] = key_states
        self.buf_v[:self.rows, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity


@dataclass
class _Saved:
    """A row's cache after a call: the token ids it covers and, per layer, (keys, values)."""

    ids: np.ndarray
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def _table(saved: Sequence[_Saved]) -> np.ndarray | None:
    """The token ids of saved caches as one matrix, padded with -1 (what prefix lookup reads)."""
    if not saved:
        return None
    table = np.full((len(saved), max(len(p.ids) for p in saved)), -1, dtype=np.int64)
    for i, p in enumerate(saved):
        table[i, :len(p.ids)] = p.ids
    return table


_MAX_REJECTIONS = 16
"""Draws a guarded row may have refused in one step before the decoder gives up on its guard."""


def sample(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else softmax sampling with nucleus ``top_p``.

    Draws by inverting each row's cumulative distribution (one uniform number a row) rather than
    with ``torch.multinomial``, whose per-row cost over a large vocabulary is a sizeable part of a
    small model's decoding step on a CPU (measured in ``docs/log.md``).
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix holding top_p of the mass
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    weights = (logits - logits.amax(-1, keepdim=True)).exp_()
    cdf = weights.cumsum(-1, dtype=torch.float64)  # float32 sums drift over a 49k vocabulary
    total = cdf[:, -1:]
    usable = torch.isfinite(total) & (total > 0)
    if not bool(usable.all()):
        bad = int((~usable).nonzero()[0, 0])
        raise ValueError(f"cannot sample row {bad}: its logits are NaN, +inf or all -inf")
    # the first token whose cumulative mass exceeds u: a token of zero mass never does, and
    # u < total keeps the index inside the vocabulary
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * total
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


class KVDecoder:
    """Sampling loop over a model's forward with buffer caches, row swap-out and prefix reuse.

    ``generate`` continues each context until an EOS id, a stop string or ``max_new_tokens``; the
    returned ids include the stopping token. Caches of the rows of the previous call are kept for
    the next one (``reset`` drops them; do so whenever the weights change).
    """

    def __init__(self, model, tokenizer, stop_strings: Sequence[str] = (),
                 eos_token_ids: Sequence[int] = (), max_rows: int = 64,
                 fast_step: bool | None = None, share_prefix: bool = True):
        """``share_prefix``: read the prefix that all of a call's contexts share (the instruction
        template of a batch of questions) once, and start every row from its cache.
        ``fast_step``: run decoding steps with :class:`zerosearch.cpu.decode_step.DecodeStep`
        where it applies (Llama-family models on a CPU with native bf16); None = as
        :func:`zerosearch.hardware.runtime_choices` decides for the model's device; False keeps the
        model's own forward."""
        from zerosearch.hardware import runtime_choices

        self.model, self.tokenizer, self.max_rows = model, tokenizer, max_rows
        self.share_prefix = share_prefix
        if fast_step is None:
            fast_step = runtime_choices(_device_type(model)).decode_step
        self.step = decode_step.build(model, max_rows) if fast_step else None
        self.stop_strings = tuple(stop_strings)
        self.num_layers = len(DynamicCache(config=model.config).layers)
        self.pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                       else tokenizer.eos_token_id)
        eos = set(eos_token_ids)
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
        eos.add(tokenizer.eos_token_id)
        self.eos = {i for i in eos if i is not None}
        # a token can only complete a stop string if it holds the string's last character
        last_chars = {s[-1] for s in self.stop_strings}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.may_stop = [any(c in (p or "") for c in last_chars) for p in pieces]
        rows = model.get_output_embeddings().weight.shape[0]  # may exceed the tokenizer (padding)
        self.may_stop += [False] * max(0, rows - len(self.may_stop))
        self._saved: list[_Saved] = []
        self.read_tokens = 0
        """Context tokens the model has read (prefill; duplicates and reused prefixes excluded)."""
        self.reused_tokens = 0
        """Context tokens whose cache came from the previous call or a shared prefix instead."""
        self.prefill_tokens = 0
        """Token positions prefill computed: every row of a chunk reads as many as its row with the
        most unread tokens (shorter rows are padded or re-read cached tokens)."""
        self.shared_tokens = 0
        """Tokens of shared prefixes read once for a whole call (counted in ``read_tokens`` once)."""
        self.decode_steps = 0
        """Decoding steps run (one new token for every active row)."""
        self.decode_steps_below_half = 0
        """Of those, steps with fewer active rows than half the rows their batch started with (rows
        that stopped early leave the rest to decode at a small batch)."""
        self.decoded_rows = 0
        """Rows summed over decoding steps (``/ decode_steps``: the mean batch of a step)."""

    def reset(self) -> None:
        """Forget the caches kept from the last call."""
        self._saved = []

    # -- prefix reuse ------------------------------------------------------------------------
    def _best_prefix(self, context: list[int], table: np.ndarray | None) -> tuple[int, int]:
        """(saved entry, tokens reusable) for ``context``; at least one token is left to read."""
        if table is None:
            return -1, 0
        m = min(len(context) - 1, table.shape[1])
        if m < _MIN_REUSE:
            return -1, 0
        same = table[:, :m] == np.asarray(context[:m])
        lcp = np.cumprod(same, axis=1).sum(axis=1)
        best = int(lcp.argmax())  # the table pads with -1, so a prefix never runs past an entry
        length = int(lcp[best])
        return (best, length) if length >= _MIN_REUSE else (-1, 0)

    def _shared_prefix(self, contexts: Sequence[list[int]], table: np.ndarray | None) -> _Saved | None:
        """The cache of the longest prefix all ``contexts`` share, read in one row, or None when it
        is short, when the contexts are all the same (read once anyway) or when a kept cache holds
        it already. Each row then reads only what follows the prefix."""
        if len(contexts) < 2:
            return None
        shortest = min(len(c) for c in contexts) - 1  # every row must still read a token
        if shortest < _MIN_SHARED:
            return None
        head = np.asarray([c[:shortest] for c in contexts])
        differs = (head != head[0]).any(axis=0)
        if not differs.any():  # identical up to the shortest: deduplication reads them once
            return None
        length = int(differs.argmax())
        if length < _MIN_SHARED:
            return None
        prefix = head[0, :length]
        if table is not None and table.shape[1] >= length and bool(
                (table[:, :length] == prefix).all(axis=1).any()):
            return None
        device = next(self.model.parameters()).device
        layers = [BufferLayer(1, length) for _ in range(self.num_layers)]
        self.model(input_ids=torch.as_tensor(prefix, device=device)[None],
                   attention_mask=torch.ones(1, length, dtype=torch.long, device=device),
                   position_ids=torch.arange(length, device=device)[None],
                   past_key_values=Cache(layers=layers), use_cache=True, logits_to_keep=1)
        self.read_tokens += length
        self.prefill_tokens += length
        self.shared_tokens += length
        return _Saved(prefix.copy(), [(layer.buf_k[0], layer.buf_v[0]) for layer in layers])

    # -- one batch of rows -------------------------------------------------------------------
    def _stopped(self, generated: list[int]) -> bool:
        tail = self.tokenizer.decode(generated[-_STOP_TAIL:], skip_special_tokens=False)
        return any(s in tail for s in self.stop_strings)

    def _chunk(self, contexts: list[list[int]], max_new_tokens: int, temperature: float,
               top_p: float, previous: list[_Saved], table: np.ndarray | None,
               saved: list[_Saved], guards: Sequence[Guard | None] | None = None) -> list[list[int]]:
        device = next(self.model.parameters()).device
        uniq: dict[tuple[int, ...], int] = {}
        inverse = [uniq.setdefault(tuple(c), len(uniq)) for c in contexts]
        unique = [list(k) for k in uniq]
        reuse = [self._best_prefix(c, table) for c in unique]
        lengths = [len(c) for c in unique]
        width = max(lengths)
        block = max(n - p for n, (_, p) in zip(lengths, reuse))
        capacity = width + max_new_tokens
        layers = [BufferLayer(len(unique), capacity) for _ in range(self.num_layers)]
        for u, ((entry, _), n) in enumerate(zip(reuse, lengths)):
            before = n - block  # this row's cached tokens left of the block that is read now
            if entry >= 0 and before > 0:
                for layer, (k, v) in zip(layers, previous[entry].kv):
                    layer.preload(u, width - n, k[:, :before], v[:, :before])
        for layer in layers:
            layer.length = width - block
        self.read_tokens += sum(min(n, block) for n in lengths)
        self.prefill_tokens += len(unique) * block
        self.reused_tokens += sum(max(0, n - block) for n in lengths)
        ids = torch.full((len(unique), block), self.pad_id, dtype=torch.long)
        positions = torch.zeros((len(unique), block), dtype=torch.long)
        mask = torch.zeros((len(unique), capacity), dtype=torch.long)
        for u, c in enumerate(unique):
            n = len(c)
            mask[u, width - n:width] = 1
            inside = c[max(0, n - block):]
            ids[u, block - len(inside):] = torch.tensor(inside)
            positions[u] = (torch.arange(block) + n - block).clamp(min=0)
        out = self.model(input_ids=ids.to(device), attention_mask=mask[:, :width].to(device),
                         position_ids=positions.to(device), past_key_values=Cache(layers=layers),
                         use_cache=True, logits_to_keep=torch.tensor([block - 1], device=device))
        # (positions as a tensor: the head then reads a contiguous copy of the last hidden state;
        # with ``logits_to_keep=1`` it gets a strided view, on which bf16 ``F.linear`` on the CPU
        # falls off its fast path)
        logits = out.logits[:, -1]
        if len(unique) < len(contexts):  # copy each unique row's cache to its duplicates
            index = torch.tensor(inverse, device=device)
            for layer in layers:
                layer.buf_k = layer.buf_k.index_select(0, index)
                layer.buf_v = layer.buf_v.index_select(0, index)
                layer.rows = len(contexts)
            logits = logits.index_select(0, index)
            mask = mask.index_select(0, index.cpu())
        mask = mask.to(device)
        cache = Cache(layers=layers)
        starts = [width - len(c) for c in contexts]
        slot_row = list(range(len(contexts)))  # which context each active slot holds
        outputs: list[list[int]] = [[] for _ in contexts]
        active, column = len(contexts), width
        started = len(contexts)
        for _ in range(max_new_tokens):
            if guards is not None:
                apply_guards(logits, [outputs[r] for r in slot_row[:active]],
                             [guards[r] for r in slot_row[:active]])
            tokens = sample(logits[:active], temperature, top_p).tolist()
            if guards is not None:
                self._refuse_spellings(logits, tokens, outputs, slot_row, guards, temperature, top_p)
            done = []
            for s, tok in enumerate(tokens):
                gen = outputs[slot_row[s]]
                gen.append(tok)
                if (tok in self.eos or len(gen) >= max_new_tokens
                        or (self.may_stop[tok] and self._stopped(gen))):
                    done.append(s)
            for s in done:  # keep the cache of every token read so far (the last one was not)
                r = slot_row[s]
                saved.append(_Saved(np.asarray(contexts[r] + outputs[r][:-1]), [
                    (layer.buf_k[s, :, starts[r]:column].clone(),
                     layer.buf_v[s, :, starts[r]:column].clone()) for layer in layers]))
            for s in sorted(done, reverse=True):  # swap the last active slot into the free one
                last = active - 1
                if s != last:
                    for layer in layers:
                        layer.buf_k[s, :, :column] = layer.buf_k[last, :, :column]
                        layer.buf_v[s, :, :column] = layer.buf_v[last, :, :column]
                    mask[s] = mask[last]
                    slot_row[s], tokens[s] = slot_row[last], tokens[last]
                active -= 1
            if active == 0:
                break
            for layer in layers:
                layer.rows = active
            mask[:active, column] = 1
            # the token fed now sits after its row's context and earlier generated tokens
            positions = [len(contexts[r]) + len(outputs[r]) - 1 for r in slot_row[:active]]
            fed = torch.tensor(tokens[:active], device=device)
            where = torch.tensor(positions, device=device)
            self.decode_steps += 1
            self.decoded_rows += active
            self.decode_steps_below_half += 2 * active < started
            if self.step is not None:
                logits = self.step(fed, where, mask[:active, :column + 1], layers)
            else:
                logits = self.model(input_ids=fed[:, None], attention_mask=mask[:active, :column + 1],
                                    position_ids=where[:, None], past_key_values=cache,
                                    use_cache=True).logits[:, -1]
            column += 1
        return outputs

    def _refuse_spellings(self, logits, tokens, outputs, slot_row, guards, temperature, top_p):
        """Redraw, row by row, a token that completes a guarded phrase in a spelling the canonical
        bans missed (another tokenisation or case, punctuation inside)."""
        for s, tok in enumerate(tokens):
            guard = guards[slot_row[s]]
            if guard is None:
                continue
            gen = outputs[slot_row[s]]
            before = guard.occurrences(self.tokenizer, gen[-guard.window:])  # once per row and step
            for _ in range(_MAX_REJECTIONS):
                if not guard.spelled_by(self.tokenizer, gen, tok, before):
                    break
                logits[s, tok] = float("-inf")
                tok = int(sample(logits[s:s + 1], temperature, top_p)[0])
            tokens[s] = tok

    @torch.inference_mode()
    def generate(self, contexts: Sequence[list[int]], max_new_tokens: int, temperature: float,
                 top_p: float, avoid: Sequence[Sequence[str]] | None = None) -> list[list[int]]:
        """The generated ids of each context, in order (stopping token included). ``avoid``: per
        context, strings its output must not spell: the canonical token sequences of each are
        masked out, and a drawn token that completes one in any other spelling (as answer matching
        sees it: any case, punctuation and articles ignored, at the start of a word) is redrawn."""
        if avoid is not None and len(avoid) != len(contexts):
            raise ValueError(f"{len(avoid)} avoid lists for {len(contexts)} contexts")
        guards = None
        if avoid is not None and any(avoid):
            guards = [Guard.build(self.tokenizer, strings) for strings in avoid]
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if any(not c for c in contexts):
            raise ValueError("cannot continue an empty context")
        if self.step is not None:
            self.step.refresh()  # repacks its weights if the model's changed since the last call
        previous, saved = self._saved, []
        table = _table(previous)
        if self.share_prefix:
            shared = self._shared_prefix(contexts, table)
            if shared is not None:
                previous = previous + [shared]
                table = _table(previous)
        # identical contexts land in the same chunk; similar lengths pad little
        order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), contexts[i]))
        results: list[list[int]] = [[] for _ in contexts]
        for start in range(0, len(order), self.max_rows):
            chunk = order[start:start + self.max_rows]
            chunk_guards = None if guards is None else [guards[i] for i in chunk]
            for i, ids in zip(chunk, self._chunk([list(contexts[i]) for i in chunk], max_new_tokens,
                                                 temperature, top_p, previous, table, saved,
                                                 chunk_guards)):
                results[i] = ids
        self._saved = saved
        return results
