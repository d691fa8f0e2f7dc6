"""Decoding: KV cache exactness, strategy equivalences, EOS handling, encoder mask filling, overfit."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from archcmp.model.config import ModelConfig
from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.formatters import make_formatter
from archcmp.data.tasks import make_task
from archcmp.decoding.generate import (DecodeConfig, answer_logprobs, choose, generate, lm_start, lm_step, mask_fill,
                            pad_after_eos, prompt_batch, repetition_penalty, run_lm, teacher_forced_logprobs)
from archcmp.decoding.beam import beam_search
from archcmp.model.models import build_model
from archcmp.model.objectives import objective_loss

V, N = 48, 8  # vocabulary, new tokens
PROMPTS = [np.array([30, 31, 32]), np.array([33, 34, 35, 36, 37, 38]), np.array([39])]


def small(arch, pe="learned", layers=1, **kw):
    """Untied head and a large init so random models give varied, decisive outputs."""
    base = dict(arch=arch, vocab_size=V, d_model=32, n_heads=4, d_ff=64, n_layers=layers, max_len=24,
                pos_encoding=pe, tie_embeddings=False, init_std=0.3)
    base.update(kw)
    return build_model(ModelConfig(**base), seed=1)


@pytest.fixture(scope="module")
def decoder():
    return small("decoder", "rope")


@pytest.fixture(scope="module")
def greedy_ref(decoder):
    return np.asarray(generate(decoder, PROMPTS, DecodeConfig(max_new_tokens=N)))


def assert_padded_after_eos(tokens):
    """Row by row: nothing but PAD after the first EOS (an oracle independent of pad_after_eos)."""
    for row in np.asarray(tokens):
        eos = np.flatnonzero(row == vocab.EOS)
        if eos.size:
            assert (row[eos[0] + 1:] == vocab.PAD).all(), row


def test_pad_after_eos_literal():
    E, P = vocab.EOS, vocab.PAD
    tokens = jnp.asarray([[5, E, 7, E, 8],   # a second EOS after the first is padded too
                          [5, 6, 7, 8, 9],   # no EOS: unchanged
                          [E, 3, 4, 5, 6],   # EOS first
                          [5, 6, 7, 8, E]])  # EOS last
    want = [[5, E, P, P, P], [5, 6, 7, 8, 9], [E, P, P, P, P], [5, 6, 7, 8, E]]
    np.testing.assert_array_equal(np.asarray(pad_after_eos(tokens)), want)


# arch x position encoding: each arch meets two encodings and each encoding two archs in the two cache tests
@pytest.mark.parametrize("arch,pe,layers", [("decoder", "rope", 1), ("prefix_lm", "learned", 2),
                                            ("encdec", "relative", 1)])
def test_cached_and_uncached_greedy_agree(arch, pe, layers):
    model = small(arch, pe, layers)
    cached, _ = run_lm(model, PROMPTS, DecodeConfig(max_new_tokens=N))
    uncached, _ = run_lm(model, PROMPTS, DecodeConfig(max_new_tokens=N, use_cache=False))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    assert len({tuple(r) for r in np.asarray(cached)}) > 1  # rows differ: the test is not vacuous
    assert_padded_after_eos(cached)


def _teacher_force(model, examples, use_cache):
    """Logits [B, m_max, V] of the cached (or uncached) decode path fed the answer tokens."""
    prompt = prompt_batch(model.cfg.arch, examples)
    m = max(ex.targets.size for ex in examples)
    forced = np.stack([np.pad(ex.targets, (0, m - ex.targets.size)) for ex in examples])[:, :m - 1]

    @nnx.jit
    def run(model, prompt, forced):
        state, logits = lm_start(model, prompt, m, use_cache)
        _, rest = jax.lax.scan(lambda st, tok: lm_step(model, st, tok), state, forced.T)
        return jnp.concatenate([logits[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)

    return np.asarray(run(model, prompt, jnp.asarray(forced)))


@pytest.mark.parametrize("arch,pe,layers,pattern", [("decoder", "relative", 1, dict(attention_pattern="local", window=3)),
                                                    ("prefix_lm", "rope", 2, dict(attention_pattern="strided", window=2,
                                                                                  stride=3)),
                                                    ("encdec", "learned", 1, {})])
def test_cached_step_logits_match_full_forward(arch, pe, layers, pattern):
    """Prefill + one token per step through the cache (left-padded prompts) reproduces the full
    forward pass over the formatter's right-padded eval batch at every answer position (sparse
    attention patterns included)."""
    model = small(arch, pe, layers, **pattern)
    examples = [Example([30, 31, 32], [40, 41, 42, vocab.EOS]), Example([33, 34, 35, 36, 37], [43, vocab.EOS])]
    batch = make_formatter(arch, 12)([[ex] for ex in examples])
    full = np.asarray(nnx.jit(lambda m, b: m(b))(model, batch))
    rows = [np.flatnonzero(batch["eval_weights"][b]) for b in range(2)]  # positions predicting y
    got = _teacher_force(model, examples, use_cache=True)
    for b, ex in enumerate(examples):
        np.testing.assert_allclose(got[b, :ex.targets.size], full[b, rows[b]], rtol=1e-4, atol=1e-4)
    if arch == "decoder":  # the uncached path too (its greedy agreement is tested above for all archs)
        got = _teacher_force(model, examples, use_cache=False)
        np.testing.assert_allclose(got[0], full[0, rows[0]], rtol=1e-4, atol=1e-4)
    if arch != "prefix_lm":  # teacher forcing reads the same numbers
        lp = answer_logprobs(model, examples)
        tf = np.asarray(teacher_forced_logprobs(model, batch))
        for b, ex in enumerate(examples):
            want = np.asarray(jax.nn.log_softmax(full[b, rows[b]]))[np.arange(ex.targets.size), ex.targets]
            np.testing.assert_allclose(lp[b], want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(tf[b].sum(), want.sum(), rtol=1e-5, atol=1e-5)


def test_beam_width_one_is_greedy(decoder, greedy_ref):
    beam, _ = beam_search(decoder, PROMPTS, DecodeConfig(strategy="beam", beam_width=1, length_penalty=0.0,
                                                         max_new_tokens=N))
    np.testing.assert_array_equal(np.asarray(beam), greedy_ref)


def test_wider_beam_beats_greedy_and_uncached_beam_agrees():
    model = small("encdec", "relative")
    cfg = DecodeConfig(strategy="beam", beam_width=3, length_penalty=0.0, max_new_tokens=N)
    tokens, scores = beam_search(model, PROMPTS, cfg)
    assert_padded_after_eos(tokens)
    greedy = np.asarray(generate(model, PROMPTS, DecodeConfig(max_new_tokens=N)))  # compiled above
    answers = [Example(x, g[:np.argmax(g == vocab.EOS) + 1] if (g == vocab.EOS).any() else g)
               for x, g in zip(PROMPTS, greedy)]
    greedy_lp = np.array([a.sum() for a in answer_logprobs(model, answers)])
    assert (np.asarray(scores) >= greedy_lp - 1e-4).all()
    uncached, _ = beam_search(model, PROMPTS, DecodeConfig(strategy="beam", beam_width=3, length_penalty=0.0,
                                                           max_new_tokens=N, use_cache=False))
    np.testing.assert_array_equal(np.asarray(uncached), np.asarray(tokens))


@pytest.mark.parametrize("opts", [dict(temperature=0.0), dict(temperature=1e-6), dict(top_k=1), dict(top_p=1e-6)])
def test_degenerate_sampling_is_greedy(decoder, greedy_ref, opts):
    got = generate(decoder, PROMPTS, DecodeConfig(strategy="sample", max_new_tokens=N, **opts), jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(got), greedy_ref)


def test_sampling_is_random_but_seeded(decoder, greedy_ref):
    cfg = DecodeConfig(strategy="sample", max_new_tokens=N, temperature=2.0)
    a, b = (np.asarray(generate(decoder, PROMPTS, cfg, jax.random.key(s))) for s in (0, 1))
    np.testing.assert_array_equal(a, np.asarray(generate(decoder, PROMPTS, cfg, jax.random.key(0))))
    assert (a != b).any() and (a != greedy_ref).any()


def constant_logits_decoder(values: dict[int, float]):
    """A decoder whose logits are ``values`` (0 elsewhere) at every position: final norm -> ones."""
    model = small("decoder")
    D = model.cfg.d_model
    model.stack.final_norm.scale[...] = jnp.zeros((D,))
    model.stack.final_norm.bias[...] = jnp.ones((D,))
    kernel = np.zeros((D, V), np.float32)
    for tok, logit in values.items():
        kernel[:, tok] = logit / D
    model.head.kernel[...] = jnp.asarray(kernel)
    return model


def test_repetition_penalty_and_eos_stop():
    model = constant_logits_decoder({7: 2.0, 8: 1.5, vocab.EOS: 1.2})
    plain, _ = run_lm(model, PROMPTS[:2], DecodeConfig(max_new_tokens=N, repetition_penalty=1.0))
    np.testing.assert_array_equal(np.asarray(plain), np.full((2, N), 7))
    # penalty 2: 7 (2.0) -> 8 (1.5 > 7's 1.0) -> EOS (1.2 > 1.0 > 0.75), then PAD; the loop exits early
    tokens, steps = run_lm(model, PROMPTS[:2], DecodeConfig(max_new_tokens=N, repetition_penalty=2.0))
    np.testing.assert_array_equal(np.asarray(tokens), [[7, 8, vocab.EOS] + [vocab.PAD] * (N - 3)] * 2)
    assert int(steps) == 3
    logits = jnp.asarray([[2.0, -2.0, 1.0, 0.5]])
    seen = jnp.asarray([[0, 1, 3]])
    np.testing.assert_allclose(repetition_penalty(logits, seen, 3, 2.0), [[1.0, -4.0, 1.0, 0.25]])
    np.testing.assert_allclose(repetition_penalty(logits, seen, 1, 2.0), [[1.0, -2.0, 1.0, 0.5]])  # only written
    np.testing.assert_array_equal(repetition_penalty(logits, seen, 3, 1.0), logits)


def test_encoder_mask_fill_and_refinement():
    model = small("encoder", layers=2)
    examples = [Example([30, 31, 32], [40, 41, 42, 43, 44, vocab.EOS]), Example([33, 34], [45, 46, vocab.EOS])]
    ks = [ex.targets.size for ex in examples]
    batch = make_formatter("encoder", 12)([[ex] for ex in examples])
    logits = np.asarray(nnx.jit(lambda m, b: m(b))(model, batch))
    argmax = np.argmax(logits, -1)
    tf = np.asarray(teacher_forced_logprobs(model, batch))  # encoder: log p(y) at the MASK slots
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["targets"][..., None], -1)[..., 0]
    np.testing.assert_allclose(tf, want * batch["eval_weights"], rtol=1e-5, atol=1e-5)
    out, info = mask_fill(model, examples, N, ks, rounds=0)
    for b, k in enumerate(ks):
        np.testing.assert_array_equal(np.asarray(info["history"])[0, b, :k], argmax[b][batch["eval_weights"][b] > 0])
    assert_padded_after_eos(out)
    refined, info = mask_fill(model, examples, N, ks, rounds=2)
    hist, remasked = np.asarray(info["history"]), np.asarray(info["remasked"])
    for r in range(2):
        np.testing.assert_array_equal(remasked[r].sum(1), [k * (2 - r) // 3 for k in ks])  # 6,3 -> 4,2 then 2,1
        changed = hist[r + 1] != hist[r]
        assert not (changed & ~remasked[r]).any()
    # the entry point dispatches to mask filling (same shapes: no new compile)
    np.testing.assert_array_equal(np.asarray(generate(model, examples, DecodeConfig(max_new_tokens=N),
                                                      target_lengths=ks)), np.asarray(out))


def test_overfit_addition_example_decodes_exactly():
    ex = make_task("addition", digits=2).make_example(47, 38)
    cfg = ModelConfig(arch="decoder", vocab_size=64, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16)
    model = build_model(cfg, seed=0)
    batch = {k: jnp.asarray(v) for k, v in make_formatter("decoder", 12)([[ex]]).items()}
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: objective_loss(m, batch)[0])(model)
        opt.update(model, grads)
        return loss

    for _ in range(100):
        loss = train_step(model, opt)
    assert float(loss) < 0.05
    out = np.asarray(generate(model, [ex], DecodeConfig(max_new_tokens=ex.targets.size + 2)))[0]
    np.testing.assert_array_equal(out, list(ex.targets) + [vocab.PAD, vocab.PAD])


def test_sampling_draws_only_from_the_top_k_and_top_p_sets():
    """4000 rows of one known distribution, one draw each: the draws are exactly the allowed set."""
    probs = np.array([0.40, 0.25, 0.15, 0.10, 0.05, 0.05])
    token = np.array([3, 0, 5, 1, 4, 2])  # token id holding each probability (not sorted by id)
    row = np.zeros(6, np.float32)
    row[token] = np.log(probs)
    logits = jnp.asarray(np.tile(row, (4000, 1)))

    def draws(**kw):
        return np.asarray(choose(logits, DecodeConfig(strategy="sample", **kw), jax.random.key(0)))

    top3 = draws(top_k=3)
    assert set(top3) == {3, 0, 5}  # the three most likely, each of them drawn
    freq = np.array([(top3 == t).mean() for t in (3, 0, 5)])
    np.testing.assert_allclose(freq, probs[:3] / probs[:3].sum(), atol=4 * np.sqrt(0.25 / 4000))
    # top-p: keep a token while the mass before it is < p: 0 and 0.40 < 0.6, then 0.65 >= 0.6
    assert set(draws(top_p=0.6)) == {3, 0}
    assert set(draws(top_p=0.7)) == {3, 0, 5}
    # top-k first, then top-p on the renormalised survivors: 0.40/0.65 = 0.615 >= 0.6 leaves one
    assert set(draws(top_k=2, top_p=0.6)) == {3}
    assert set(draws()) == set(range(6))  # unfiltered sampling reaches every token


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_answer_logprobs_fixed_shape_padding_changes_nothing(arch):
    """Scoring at a larger fixed shape (extra positions and rows, no eval weight) gives the same
    per-token log-probs as the tight batch; too small a shape is refused."""
    model = small(arch, "rope")
    examples = [Example([30, 31, 32], [40, 41, 42, vocab.EOS]), Example([33, 34], [43, vocab.EOS])]
    tight = answer_logprobs(model, examples)
    padded = answer_logprobs(model, examples, seq_len=14, rows=5)
    assert [a.size for a in tight] == [4, 2] and [a.size for a in padded] == [4, 2]
    for a, b in zip(tight, padded):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="seq_len=8"):
        answer_logprobs(model, examples, seq_len=8)
    with pytest.raises(ValueError, match="rows=1"):
        answer_logprobs(model, examples, rows=1)
