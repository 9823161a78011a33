"""KVDecoder: the same tokens as transformers' generate, caches reused across turns, stops at stop
strings and EOS, stopped rows leave the batch, and models it cannot serve are refused."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import zerosearch.generation.kv as decoding
from zerosearch.generation.kv import KVDecoder, sample, supports
from zerosearch.generation.hf import HFGenerator
from zerosearch.protocol import STOP_STRINGS


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model)


def _contexts(tok):
    texts = ["Question: who wrote it?", "A much longer question about a river, a city and a year?",
             "Question: who wrote it?", "Short"]
    return [tok(t)["input_ids"] for t in texts]


def _hf_greedy(model, tok, contexts, n):
    outs = []
    for c in contexts:  # one at a time: no padding at all
        o = model.generate(input_ids=torch.tensor([c]),
                           attention_mask=torch.ones(1, len(c), dtype=torch.long),
                           max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        outs.append(o[0, len(c):].tolist())
    return outs


def test_greedy_equals_generate_and_reuse_equals_fresh(model_tok):
    model, tok = model_tok
    assert supports(model)
    contexts = _contexts(tok)
    decoder = KVDecoder(model, tok, eos_token_ids=[], max_rows=3)  # 3 rows: two chunks
    decoder.eos = set()  # run the full budget, like min_new_tokens
    first = decoder.generate(contexts, 12, 0.0, 1.0)
    assert first == _hf_greedy(model, tok, contexts, 12)
    assert decoder.read_tokens == sum(len(c) for c in contexts[1:])  # the duplicate read once
    # the next turn: the generated text (minus its unread last token) plus an inserted block
    inserted = tok(" <information>Doc 1: text</information>", add_special_tokens=False)["input_ids"]
    second_contexts = [c + g + inserted for c, g in zip(contexts, first)]
    read_before = decoder.read_tokens
    second = decoder.generate(second_contexts, 10, 0.0, 1.0)
    assert decoder.reused_tokens > 0
    assert decoder.read_tokens - read_before < sum(len(c) for c in second_contexts) // 2
    assert second == _hf_greedy(model, tok, second_contexts, 10)
    decoder.reset()
    assert decoder.generate(second_contexts, 10, 0.0, 1.0) == second


def test_a_prefix_all_contexts_share_is_read_once(model_tok):
    model, tok = model_tok
    template = tok("Answer the question. Think first, search when you lack knowledge, and give the "
                   "final answer between answer tags, without any further explanation at all, please. "
                   "Question:")["input_ids"]
    assert len(template) >= decoding._MIN_SHARED
    tails = [" who wrote it?", " which river flows through the city, and since when?", " who?"]
    contexts = [template + tok(t, add_special_tokens=False)["input_ids"] for t in tails]
    decoder = KVDecoder(model, tok, eos_token_ids=[], max_rows=2)  # the prefix serves both chunks
    decoder.eos = set()
    out = decoder.generate(contexts, 8, 0.0, 1.0)
    assert out == _hf_greedy(model, tok, contexts, 8)
    shared = decoder.shared_tokens
    assert shared >= len(template)  # the template (and any common start of the tails)
    # each chunk of rows (by length) reads as many tokens per row as its longest unshared tail
    tails_read = sorted(len(c) - shared for c in contexts)
    chunks = [tails_read[i:i + 2] for i in range(0, len(tails_read), 2)]
    assert decoder.read_tokens == shared + sum(len(c) * max(c) for c in chunks)
    plain = KVDecoder(model, tok, eos_token_ids=[], max_rows=2, share_prefix=False)
    plain.eos = set()
    assert plain.generate(contexts, 8, 0.0, 1.0) == out
    assert plain.shared_tokens == 0 and plain.read_tokens == sum(len(c) for c in contexts)
    # the next turn's contexts start with the previous rows' caches: no second shared read
    decoder.generate([c + o for c, o in zip(contexts, out)], 4, 0.0, 1.0)
    assert decoder.shared_tokens == shared
    assert decoder.generate([], 4, 0.0, 1.0) == []


def test_rows_that_stop_leave_and_the_others_go_on(model_tok):
    model, tok = model_tok
    contexts = _contexts(tok) + [tok("Yet another prompt, of middling length")["input_ids"]]
    reference = _hf_greedy(model, tok, contexts, 12)
    # make two tokens of the reference outputs "EOS": rows stop at different steps
    stops = {reference[0][2], reference[1][5]}
    expected = []
    for out in reference:
        cut = next((i + 1 for i, t in enumerate(out) if t in stops), len(out))
        expected.append(out[:cut])
    lengths = sorted(len(e) for e in expected)
    assert lengths[0] < 12 and lengths[-1] == 12  # some rows stopped early, some ran on
    decoder = KVDecoder(model, tok)
    decoder.eos = stops
    assert decoder.generate(contexts, 12, 0.0, 1.0) == expected


def test_stops_at_stop_strings_eos_and_budget(model_tok, monkeypatch):
    model, tok = model_tok
    decoder = KVDecoder(model, tok, STOP_STRINGS)
    context = tok("a prompt")["input_ids"]

    def run(script, budget):
        it = iter(script)
        monkeypatch.setattr(decoding, "sample", lambda *a: torch.tensor([next(it)]))
        return decoder.generate([context], budget, 1.0, 1.0)[0]

    search = tok(" think <search>q</search> more text", add_special_tokens=False)["input_ids"]
    out = run(search, 40)
    assert tok.decode(out).endswith("</search>") and out == search[:len(out)]
    assert run([7, 8, tok.eos_token_id, 9, 10], 40) == [7, 8, tok.eos_token_id]
    assert run([7] * 50, 5) == [7] * 5


def test_sample_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, -3.0, -3.0]] * 200)
    drawn = sample(logits, 1.0, 0.5)
    assert set(drawn.tolist()) == {0}
    drawn = sample(logits, 1.0, 0.99)
    assert set(drawn.tolist()) == {0, 1}
    assert sample(logits, 0.0, 1.0).tolist() == [0] * 200


def test_models_with_sliding_layers_use_generate(tiny_model):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    model = MistralForCausalLM(config).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert not supports(model)
    generator = HFGenerator(model, tok)
    assert generator.decoder is None
    [out] = generator.generate([[5, 6, 7]], 4, 1.0, 1.0)  # generate, full-vocabulary sampling
    assert 1 <= len(out.ids) <= 4
    with pytest.raises(ValueError, match="sliding window"):
        HFGenerator(model, tok, fast=True)


def test_rollouts_match_generate_turn_by_turn(model_tok):
    """Greedy multi-turn rollouts (corrective messages inserted between turns) give the same
    tokens with KVDecoder, which reuses each turn's cache, as with unpadded generate calls."""
    from helpers import RecordingEngine
    from zerosearch.rollout import RolloutConfig, Row, run_rollouts

    model, tok = model_tok
    rows = [Row(f"Question {i}: which city?", ["x"], i) for i in range(3)]
    cfg = RolloutConfig(max_turns=2, max_turn_tokens=10, max_completion_tokens=96, temperature=0.0)
    fast = HFGenerator(model, tok, fast=True)
    got = run_rollouts(rows, fast, tok, RecordingEngine(), cfg)
    want = run_rollouts(rows, HFGenerator(model, tok, max_batch_size=1, fast=False), tok,
                        RecordingEngine(), cfg)
    assert [t.completion_ids for t in got] == [t.completion_ids for t in want]
    assert max(t.turns for t in got) > 1 and fast.decoder.reused_tokens > 0
    assert fast.decoder._saved == []  # run_rollouts released the caches


def test_in_process_simulator_backend_gives_generates_text():
    """The in-process chat back end (simulated engine) decodes with KVDecoder: same greedy texts as
    its generate path, and nothing kept between batches."""
    from zerosearch.llm.base import GenerationParams
    from zerosearch.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend("embedded:tiny-random")
    try:
        assert backend.decoder is not None
        chats = [[{"role": "user", "content": f"Query {i}: {'long ' * i}question"}] for i in range(3)]
        params = GenerationParams(max_new_tokens=12, temperature=0.0)
        fast = backend.generate(chats, params)
        assert backend.decoder._saved == []
        backend.decoder = None
        assert backend.generate(chats, params) == fast
    finally:
        backend.close()


def _step_inputs(model, rows=4, filled=10, seed=0):
    """Buffer caches holding ``filled`` random columns, a left-padded mask and distinct positions."""
    from zerosearch.generation.kv import BufferLayer

    cfg = model.config
    dim = cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(cfg.num_hidden_layers):
        layer = BufferLayer(rows, filled + 4)
        layer.allocate(torch.empty(cfg.num_key_value_heads, 1, dim, dtype=model.dtype))
        layer.buf_k.copy_(torch.randn(layer.buf_k.shape, generator=g))
        layer.buf_v.copy_(torch.randn(layer.buf_v.shape, generator=g))
        layer.length = filled
        layers.append(layer)
    mask = torch.ones(rows, filled + 4, dtype=torch.long)
    mask[0, :4] = 0  # row 0 is four tokens shorter
    positions = torch.full((rows,), filled)
    positions[0] = filled - 4
    return layers, mask, positions


def _forward_steps(model, step, steps=3, rows=4, filled=10):
    """Logits of ``steps`` consecutive decoding steps by the model's forward and by ``step``."""
    from transformers.cache_utils import Cache

    ours, theirs = _step_inputs(model, rows, filled), _step_inputs(model, rows, filled)
    tokens = torch.tensor([5, 17, 300, 9000][:rows])
    got, want = [], []
    with torch.inference_mode():
        for s in range(steps):
            columns = filled + s + 1
            want.append(model(input_ids=tokens[:, None], attention_mask=theirs[1][:, :columns],
                              position_ids=(theirs[2] + s)[:, None],
                              past_key_values=Cache(layers=theirs[0]), use_cache=True).logits[:, -1])
            got.append(step(tokens, ours[2] + s, ours[1][:, :columns], ours[0]))
            tokens = want[-1].argmax(-1)
    assert ours[0][0].length == theirs[0][0].length == filled + steps
    return torch.stack(got).float(), torch.stack(want).float()


def test_decode_step_computes_the_models_forward(model_tok):
    """The written-out decoding step gives the model's logits (float32, plain matmuls) over several
    steps with a padded row, writes the cache like the model does, and repacks when weights change."""
    from zerosearch.cpu.decode_step import DecodeStep, build

    model, _ = model_tok
    step = DecodeStep(model, packed=False)
    step.refresh()
    got, want = _forward_steps(model, step)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert step.packs == 1
    step.refresh()
    assert step.packs == 1  # nothing changed: no repack
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    try:
        step.refresh()
        assert step.packs == 2
        got, want = _forward_steps(model, step)
        assert torch.allclose(got, want, atol=1e-5)
    finally:
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.div_(1.5)
    assert build(model) is None  # float32 has no packed kernel: the model's forward is as fast


def test_decode_step_packed_bf16_follows_the_model(tiny_model):
    """On CPUs with native bf16 the packed step is what KVDecoder runs: logits within bf16 rounding of
    the model's, the same greedy tokens as the model's forward."""
    from zerosearch.cpu.decode_step import build

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bf16: no packed bf16 decoding step")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    step = build(model, rows=4)
    assert step is not None and step.kernel == "onednn"
    step.refresh()
    got, want = _forward_steps(model, step)
    assert torch.allclose(got, want, atol=0.05), (got - want).abs().max()
    fast = KVDecoder(model, tok, max_rows=3)
    assert fast.step is not None
    slow = KVDecoder(model, tok, max_rows=3, fast_step=False)
    contexts = _contexts(tok)
    assert fast.generate(contexts, 12, 0.0, 1.0) == slow.generate(contexts, 12, 0.0, 1.0)


def test_decode_step_refuses_other_families(tiny_model):
    from zerosearch.cpu.decode_step import build

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert build(model) is not None
    model.config.model_type = "gpt2"
    assert build(model) is None


def test_guard_bans_canonical_sequences():
    from zerosearch.generation.guard import Guard, apply_guards

    guard = Guard(["x"], [(5,), (7, 8, 9), (7, 3)], window=4)
    assert Guard.build(None, ["?!", ""]) is None  # nothing a document could spell
    assert guard.banned_next([]) == [5]
    assert guard.banned_next([1, 7, 8]) == [5, 9]
    assert guard.banned_next([7]) == [5, 3]
    logits = torch.zeros(2, 10)
    apply_guards(logits, [[7, 8], [7]], [guard, None])
    assert logits[0].isinf().nonzero().flatten().tolist() == [5, 9]
    assert not logits[1].isinf().any()  # a row without a guard is untouched


def _has_phrase(text, phrase):
    from zerosearch.rewards import normalize_answer

    return f" {normalize_answer(phrase)}" in f" {normalize_answer(text)}"


@pytest.mark.parametrize("canonical", [True, False])
def test_kvdecoder_never_writes_an_avoided_string(model_tok, monkeypatch, canonical):
    """Sampling (seeded) that must avoid a word it wrote unguarded: the guarded row no longer holds
    it, in any case or spelling. With ``canonical`` False the token-sequence masks are switched
    off, so redrawing alone must do it."""
    from zerosearch.generation.guard import Guard

    model, tok = model_tok
    contexts = _contexts(tok)
    decoder = KVDecoder(model, tok, eos_token_ids=[], max_rows=3)
    decoder.eos = set()

    def run(avoid=None):
        torch.manual_seed(0)
        return [tok.decode(ids) for ids in decoder.generate(contexts, 24, 1.0, 1.0, avoid=avoid)]

    before = run()
    assert run() == before  # seeded: the same draws
    word = next(w for w in before[1].split() if w.isalpha() and len(w) > 2)
    if not canonical:
        build = Guard.build.__func__
        monkeypatch.setattr(Guard, "build", classmethod(
            lambda cls, t, strings: (g := build(cls, t, strings)) and Guard(g.phrases, [], g.window)))
    # upper-cased: the canonical sequences of "WORD" are not what the model wrote
    after = run([[], [word.upper()], [], []])
    assert _has_phrase(before[1], word) and not _has_phrase(after[1], word)


def test_generate_fallback_bans_canonical_sequences(model_tok):
    from zerosearch.generation.guard import Guard, GuardProcessor

    model, tok = model_tok
    contexts = _contexts(tok)
    reference = _hf_greedy(model, tok, contexts, 12)
    pair = tuple(reference[1][3:5])  # the tiny model's tokens need not be the canonical spelling
    guard = Guard(["unused"], [pair], window=8)
    c = contexts[1]
    out = model.generate(input_ids=torch.tensor([c]), attention_mask=torch.ones(1, len(c), dtype=torch.long),
                         max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                         logits_processor=[GuardProcessor([guard], len(c))])[0, len(c):].tolist()
    j = next(i for i in range(1, 12) if tuple(reference[1][i - 1:i + 1]) == pair)
    assert out[:j] == reference[1][:j] and out[j] != reference[1][j]
    assert not any(tuple(out[i:i + 2]) == pair for i in range(len(out) - 1))


def test_backend_avoid_strings(tiny_model):
    """TransformersBackend.chat(avoid=…): the words a conversation must avoid do not occur in its
    output; the other conversation's output is unchanged."""
    from zerosearch.generation.guard import Guard
    from zerosearch.llm.base import GenerationParams
    from zerosearch.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend("embedded:tiny-random")
    try:
        chats = [[{"role": "user", "content": f"Query {i}: which river?"}] for i in range(2)]
        params = GenerationParams(max_new_tokens=24, temperature=1.0)  # random tokens: many words

        def run(avoid=None):
            torch.manual_seed(0)
            return [c.text for c in backend.chat(chats, params, avoid=avoid)]

        before = run()
        assert run() == before  # seeded: the same draws
        # a word the output spells as one canonical token, so the ban is what must stop it
        word = next(w for w in before[0].split() if w.isalpha() and len(w) > 2
                    and any(len(s) == 1 for s in Guard.build(backend.tokenizer, [w]).sequences))
        after = run([[word], []])
        assert word in before[0].split() and word not in after[0].split()
        assert after[0] != before[0]
        with pytest.raises(ValueError, match="avoid lists"):
            backend.chat(chats, params, avoid=[[word]])
    finally:
        backend.close()


def test_sample_draws_each_token_with_its_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    torch.manual_seed(0)
    n = 40_000
    drawn = sample(probs.log().expand(n, 5).contiguous() * 2.0, 2.0, 1.0)  # temperature undoes x2
    freq = torch.bincount(drawn, minlength=5).double() / n
    # three standard errors of a binomial proportion at n draws; zero mass is never drawn
    assert torch.all((freq - probs.double()).abs() <= 3 * (probs * (1 - probs) / n).sqrt() + 1e-12)
    assert freq[4] == 0
    # a row whose mass sits on its last token must still return that token, never one past it
    assert sample(torch.tensor([[-float("inf")] * 3 + [0.0]] * 100), 1.0, 1.0).tolist() == [3] * 100
    # a broken row is an error naming it, never a silent token
    for broken in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="row 1"):
            sample(torch.tensor([[0.0, 1.0], [broken, 0.0]]), 1.0, 1.0)
    with pytest.raises(ValueError, match="row 0"):
        sample(torch.full((1, 3), -float("inf")), 1.0, 1.0)
