"""One decoding step (one new token per row) of a Llama-family decoder, written out for the CPU.

Used only on CPUs with native bf16 (:func:`zerosearch.hardware.runtime_choices`).
:class:`zerosearch.generation.kv.KVDecoder` spends nearly all of a rollout in decoding steps of a few
dozen rows. transformers' forward computes the right thing but, on a CPU, slower than it has to:
``nn.Linear`` passes its weight in the stored layout, which oneDNN re-lays out on every call,
grouped-query attention (given a mask) first copies
every layer's cached keys and values once per query head sharing them (``repeat_kv``), and each layer
rebuilds masks and dispatches through generic modules. ``DecodeStep`` computes the same function with
- each layer's weights packed once for the CPU GEMM (oneDNN, bfloat16 weights), with
  q/k/v and gate/up fused, so a layer runs four matmuls; repacked whenever a weight changes (an
  optimizer step, a ``load_state_dict`` into a generation copy), detected by tensor versions;
- attention of the query heads against their shared key/value head, reading the cache in place;
- the rotary angles and the mask made once per step, for every layer.

Embeddings, norms, the activation, the rotary embedding and the output head are the model's own
modules, so the step follows the model's configuration (rope scaling, norm epsilon, activation).
Families: ``llama``, ``mistral`` and ``qwen2`` (their decoder layers are the same function; biases
taken where present); :func:`build` returns None for anything else and for devices other than the
CPU, and the caller keeps using the model's forward. Prefill stays on the model's
forward too: its matmuls are large and already run near the machine's peak.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "mistral", "qwen2")
"""``config.model_type`` values whose decoder layer this step reproduces."""


def _packed_kernel(dtype: torch.dtype) -> tuple[str, object, object] | None:
    """(name, pack(weight, rows), linear(x, packed, bias)) for CPU weights of ``dtype``, or
    None where no packed GEMM is faster than plain ``F.linear``.

    bfloat16 goes through oneDNN's packed weights (faster than the model's forward at rollout
    batch sizes; ``benchmarks/train_step.py`` times both). float32 has none: MKL's packed GEMM is
    used only at the row count it was packed for (rows leave the batch as they stop), and oneDNN's
    float32 path was no faster than ``F.linear``.
    """
    dnn = torch.ops.mkldnn
    if (dtype == torch.bfloat16 and hasattr(dnn, "_reorder_linear_weight")
            and hasattr(dnn, "_linear_pointwise") and dnn._is_mkldnn_bf16_supported()):
        return ("onednn", lambda w, rows: dnn._reorder_linear_weight(w, rows),
                lambda x, p, b: dnn._linear_pointwise(x, p, b, "none", [], ""))
    return None


class _Linear:
    """One (possibly fused) projection: the source modules, the weight in the layout the step
    multiplies with (packed for the kernel, else the plain concatenation), the bias."""

    def __init__(self, modules: Sequence[torch.nn.Linear]):
        self.modules = list(modules)
        self.sizes = [m.weight.shape[0] for m in self.modules]
        self.weight = self.packed = self.bias = None

    def sources(self) -> list[torch.Tensor]:
        return [t for m in self.modules for t in (m.weight, m.bias) if t is not None]

    def pack(self, kernels, rows: int) -> None:
        weight = torch.cat([m.weight.detach() for m in self.modules]).contiguous()
        biases = [m.bias for m in self.modules]
        self.bias = (None if all(b is None for b in biases) else torch.cat([
            b.detach() if b is not None else weight.new_zeros(n)
            for b, n in zip(biases, self.sizes)]))
        # the packed kernel reads only its own layout: no second copy of the weights is kept
        self.packed = kernels[1](weight, rows) if kernels else None
        self.weight = None if kernels else weight

    def __call__(self, x: torch.Tensor, kernels, split: bool = True):
        """The projection of ``x``; a fused one split into its modules' outputs unless ``split``
        is False."""
        if self.packed is None:
            y = F.linear(x, self.weight, self.bias)
        else:
            y = kernels[2](x, self.packed, self.bias)
        return y.split(self.sizes, dim=-1) if split and len(self.sizes) > 1 else y


class DecodeStep:
    """``step(tokens, positions, mask, layers)`` -> next-token logits, for one new token per row.

    ``tokens`` and ``positions`` are ``(rows,)`` long tensors, ``mask`` a ``(rows, columns)`` 0/1
    tensor over the cache columns including the one written now, ``layers`` the
    :class:`zerosearch.generation.kv.BufferLayer` of each decoder layer, whose ``rows`` and ``length`` say
    which rows are active and where the new column goes (both updated like the model's forward
    would). ``kernel`` names the GEMM in use: ``onednn`` (packed) or ``torch`` (``F.linear``).
    """

    def __init__(self, model, rows: int = 32, packed: bool = True):
        """``rows``: the row count the packed weights are laid out for (any count runs);
        ``packed``: False runs plain ``F.linear`` on the fused weights (tests compare it exactly)."""
        self.rows = rows
        self.base = model.get_decoder()
        self.layers = []
        for layer in self.base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((layer, _Linear([attn.q_proj, attn.k_proj, attn.v_proj]),
                                _Linear([attn.o_proj]), _Linear([mlp.gate_proj, mlp.up_proj]),
                                _Linear([mlp.down_proj])))
        self.head = _Linear([model.get_output_embeddings()])
        attn = self.base.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        kernels = _packed_kernel(model.dtype) if packed else None
        self.kernels = kernels
        self.kernel = kernels[0] if kernels else "torch"
        self._versions: list[int] | None = None
        self.packs = 0
        """How many times the weights were (re)packed."""

    def _linears(self):
        for _, *linears in self.layers:
            yield from linears
        yield self.head

    def refresh(self) -> None:
        """Repack the weights if any changed since the last pack (cheap when none did)."""
        sources = [t for linear in self._linears() for t in linear.sources()]
        versions = [t._version for t in sources] + [t.data_ptr() for t in sources]
        if versions != self._versions:
            with torch.no_grad():
                for linear in self._linears():
                    linear.pack(self.kernels, self.rows)
            self._versions, self.packs = versions, self.packs + 1

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 layers) -> torch.Tensor:
        kernels = self.kernels
        n, dim = tokens.shape[0], self.head_dim
        x = self.base.embed_tokens(tokens)
        cos, sin = self.base.rotary_emb(x[:, None], positions[:, None])  # (n, 1, dim)
        half = dim // 2
        # rotate_half(t) * sin == t.roll(half) * (sin with its first half negated): one op fewer
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        attend = mask.bool()[:, None, None, :]
        heads = self.heads + self.kv_heads

        for (layer, qkv, out, gate_up, down), cache in zip(self.layers, layers):
            h = layer.input_layernorm(x)
            y = qkv(h, kernels, split=False)
            # queries and keys sit side by side in the fused projection: rotated at once
            qk = y[:, :heads * dim].view(n, heads, dim)
            qk = qk * cos + qk.roll(half, -1) * sin
            q, k = qk[:, :self.heads, None], qk[:, self.heads:, None]
            keys, values = cache.update(k, y[:, heads * dim:].view(n, self.kv_heads, 1, dim))
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=self.scaling,
                                               enable_gqa=self.kv_heads != self.heads)
            x = x + out(a.reshape(n, self.heads * dim), kernels)
            g, u = gate_up(layer.post_attention_layernorm(x), kernels)
            x = x + down(layer.mlp.act_fn(g) * u, kernels)
        return self.head(self.base.norm(x), kernels)


def build(model, rows: int = 32) -> DecodeStep | None:
    """A :class:`DecodeStep` for ``model``, or None where it would not be faster than the model's
    own forward (another family, a device other than the CPU, a dtype without a packed kernel:
    float32 everywhere, bfloat16 on CPUs without native bf16)."""
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return None
    if next(model.parameters()).device.type != "cpu":
        return None
    layer = model.get_decoder().layers[0]
    needed = ("input_layernorm", "post_attention_layernorm", "self_attn", "mlp")
    if not all(hasattr(layer, name) for name in needed) or not hasattr(layer.self_attn, "scaling"):
        return None
    if _packed_kernel(model.dtype) is None:
        return None
    return DecodeStep(model, rows)
