"""Every shared component changes behaviour the way docs/design.md and layers.py claim.

Each test compares a component against the property it is supposed to have *and* against a
variant that must not have it, so a component silently degrading to a no-op fails a test.
Models are tiny (d_model 32, T 8) and run eagerly.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archcmp.model import masks
from archcmp.model.accounting import count_params
from archcmp.model.config import ModelConfig
from archcmp.model.embeddings import apply_rope, relative_buckets, sinusoidal_table
from archcmp.model.layers import MLP, Block, Norm
from archcmp.model.models import build_model

T = 8
PERM = np.array([3, 0, 6, 1, 7, 2, 5, 4])  # a derangement-heavy permutation of range(8)


def cfg_for(arch="encoder", **kw):
    # scan_layers=False: eager op-by-op dispatch hits JAX's per-primitive cache across tests,
    # much cheaper than compiling a fresh scan body per config (scan == loop is in test_models)
    base = dict(arch=arch, vocab_size=64, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16,
                tie_embeddings=False, scan_layers=False)
    base.update(kw)
    return ModelConfig(**base)


def make_batch(ids=None, segments=None, prefix_len=3, enc_segments=None, shift=0):
    """One row of T tokens (distinct ids by default); positions restart per segment (+ shift)."""
    ids = np.arange(10, 10 + T) if ids is None else np.asarray(ids)
    seg = np.ones(len(ids), np.int32) if segments is None else np.asarray(segments, np.int32)
    enc_seg = np.ones(len(ids), np.int32) if enc_segments is None else np.asarray(enc_segments, np.int32)
    pos, enc_pos = _positions(seg) + shift, _positions(enc_seg) + shift
    return {
        "inputs": jnp.asarray(ids, jnp.int32)[None],
        "segment_ids": jnp.asarray(seg)[None],
        "positions": jnp.asarray(pos)[None],
        "prefix_mask": jnp.asarray((pos - shift < prefix_len) & (seg > 0))[None],
        "enc_inputs": jnp.asarray(np.arange(40, 40 + len(enc_seg)), jnp.int32)[None],
        "enc_segment_ids": jnp.asarray(enc_seg)[None],
        "enc_positions": jnp.asarray(enc_pos)[None],
    }


def _positions(seg):
    out = np.zeros(len(seg), np.int32)
    for i in range(1, len(seg)):
        out[i] = out[i - 1] + 1 if seg[i] == seg[i - 1] else 0
    return out


def flow(model, batch):
    """|d (logits[i] · r) / d embedding[j]| as a [T_out, T_in] matrix (as in test_models.py)."""
    graphdef, params = nnx.split(model)
    ids = batch["inputs"][0]
    r = jax.random.normal(jax.random.key(1), (model.cfg.vocab_size,))

    def outputs(table):
        p = jax.tree.map(lambda x: x, params)
        p["embed"]["table"] = p["embed"]["table"].replace(table)
        return nnx.merge(graphdef, p)(batch)[0] @ r  # [T]

    jac = jax.jacrev(outputs)(params["embed"]["table"][...])  # [T, V, D]; eager: op cache is shared
    return np.abs(np.asarray(jac[:, ids])).sum(-1)


def first_block(model):
    """Layer 0 of a built model's (first) stack as a standalone Block, exactly as Stack applies it.
    Cheaper than initialising a new Block: the stacked init is already compiled for these shapes."""
    stack = model.stack if hasattr(model, "stack") else model.encoder
    graphdef, params = nnx.split(stack.blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[0], params))


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


# ==== positional encodings ==================================================================
# init_std 0.3 makes attention clearly non-uniform, so position effects are far above float noise
@pytest.mark.parametrize("pos", ["none", "learned", "sinusoidal", "rope", "relative"])
def test_encoder_permutation_equivariance_only_without_positions(pos):
    model = build_model(cfg_for("encoder", pos_encoding=pos, init_std=0.3), 0)
    ids = np.arange(10, 10 + T)
    out = np.asarray(model(make_batch(ids))[0])  # [T, V]
    out_perm = np.asarray(model(make_batch(ids[PERM]))[0])  # positions stay 0..T-1
    if pos == "none":
        np.testing.assert_allclose(out_perm, out[PERM], rtol=1e-5, atol=1e-5)
    else:
        assert rel_diff(out_perm, out[PERM]) > 1e-2, pos


def test_decoder_without_positions_is_not_permutation_equivariant():
    """The causal mask alone carries order information (Haviv et al. 2022, NoPos)."""
    model = build_model(cfg_for("decoder", pos_encoding="none", init_std=0.3, n_layers=1), 0)
    ids = np.arange(10, 10 + T)
    perm = np.array([5, 2, 0, 6, 1, 3, 4, 7])  # shuffles the first T-1 tokens, keeps the last
    out = np.asarray(model(make_batch(ids))[0])
    out_perm = np.asarray(model(make_batch(ids[perm]))[0])
    assert rel_diff(out_perm[:-1], out[perm][:-1]) > 1e-2
    # with one layer the last token attends to the whole, order-free, set of tokens: unchanged
    np.testing.assert_allclose(out_perm[-1], out[-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pos, invariant", [("rope", True), ("relative", True), ("none", True),
                                            ("learned", False), ("sinusoidal", False)])
def test_shift_of_all_positions(pos, invariant):
    """Relative encodings only see offsets: shifting every position changes nothing.
    Absolute encodings see positions themselves."""
    model = build_model(cfg_for("decoder", pos_encoding=pos, init_std=0.3), 0)  # positions up to 12 < max_len
    base = np.asarray(model(make_batch(shift=0)))
    shifted = np.asarray(model(make_batch(shift=5)))
    if invariant:
        np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)
    else:
        assert rel_diff(shifted, base) > 1e-2


def test_rope_scores_depend_only_on_offset():
    H, K = 4, 8  # the model's attention shapes [1, T, H, K]: 4 independent random (q, k) pairs
    kq, kk = jax.random.split(jax.random.key(0))
    q = jnp.broadcast_to(jax.random.normal(kq, (1, 1, H, K)), (1, T, H, K))
    k = jnp.broadcast_to(jax.random.normal(kk, (1, 1, H, K)), (1, T, H, K))
    pos = jnp.arange(T)[None] * 3 + 7  # positions 7, 10, ..., 28 (non-trivial start)
    rq, rk = apply_rope(q, pos, 10000.0)[0], apply_rope(k, pos, 10000.0)[0]  # [T, H, K]
    s = np.asarray(jnp.einsum("ihk,jhk->hij", rq, rk), np.float64)  # s[h, i, j] = q_h(p_i) . k_h(p_j)
    for h in range(H):
        by_offset = {}
        for i in range(T):
            for j in range(T):
                by_offset.setdefault(i - j, []).append(s[h, i, j])
        for d, vals in by_offset.items():  # same offset at any absolute position -> same score
            np.testing.assert_allclose(vals, vals[0], rtol=1e-4, atol=1e-5, err_msg=f"head {h} offset {d}")
        firsts = np.array([v[0] for v in by_offset.values()])  # one score per offset -7..7
        gaps = np.abs(firsts[:, None] - firsts[None, :])[~np.eye(len(firsts), dtype=bool)]
        assert gaps.min() > 1e-4, h  # different offsets (incl. +d vs -d) -> different scores
        assert np.ptp(firsts) > 0.1, h  # and not by a negligible amount


def test_rope_preserves_norms_and_position_zero_is_identity():
    x = jax.random.normal(jax.random.key(2), (1, T, 4, 8))
    pos = jnp.array([[0, 1, 2, 50, 1000, 3, 0, 7]])
    y = np.asarray(apply_rope(x, pos, 10000.0))
    x = np.asarray(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(y[0, 1], x[0, 1])  # it does rotate
    np.testing.assert_array_equal(y[0, 0], x[0, 0])  # angle 0 at position 0
    np.testing.assert_array_equal(y[0, 6], x[0, 6])


def _t5_bucket_reference(relative_position, num_buckets=32, max_distance=128):
    """mesh_tensorflow / HF T5 ``_relative_position_bucket`` (bidirectional), in plain Python."""
    ret, n = 0, -relative_position
    num_buckets //= 2
    ret += (n < 0) * num_buckets
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


def test_relative_buckets_t5_properties():
    nb, md = 32, 128
    offsets = np.arange(-300, 301)
    b = np.asarray(relative_buckets(jnp.asarray(offsets), nb, md))
    by = dict(zip(offsets.tolist(), b.tolist()))
    # matches the T5 reference everywhere
    assert b.tolist() == [_t5_bucket_reference(int(o), nb, md) for o in offsets]
    # exact for small offsets: |offset| < nb // 4 each get their own bucket
    assert [by[-d] for d in range(8)] == list(range(8))
    assert [by[d] for d in range(1, 8)] == list(range(17, 24))
    # sign is distinguished: keys after the query use the upper half
    assert all(by[d] >= nb // 2 and by[-d] < nb // 2 for d in range(1, 301))
    assert by[0] == 0
    # monotone (non-decreasing) in |offset| on each side, and strictly increasing near zero
    for side in (1, -1):
        seq = np.array([by[side * d] for d in range(301)])
        assert (np.diff(seq[1:]) >= 0).all()
    # capped: far offsets saturate at the last bucket of their half, never beyond nb - 1
    assert by[300] == by[md] == nb - 1 and by[-300] == by[-md] == nb // 2 - 1
    assert b.min() >= 0 and b.max() == nb - 1
    # every bucket is used except nb//2 ("key after query by 0" cannot happen: offset 0 is lower half)
    assert sorted(set(b.tolist())) == [k for k in range(nb) if k != nb // 2]


def test_sinusoidal_table_closed_form():
    d, table = 16, np.asarray(sinusoidal_table(64, 16), np.float64)
    assert table.shape == (64, 16)
    for p, i in [(0, 0), (1, 0), (5, 2), (17, 5), (63, 7), (40, 3)]:
        angle = p / 10000 ** (2 * i / d)
        assert table[p, 2 * i] == pytest.approx(math.sin(angle), abs=2e-5), (p, i)
        assert table[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=2e-5), (p, i)
    np.testing.assert_allclose(table[0], np.tile([0.0, 1.0], d // 2), atol=0)


# ==== norms =================================================================================
def _rows():
    return jax.random.normal(jax.random.key(3), (1, T, 32)) * 7.0 + 3.0  # scale and offset per row


def test_rmsnorm_unit_rms_without_centering():
    x = _rows()
    y = np.asarray(Norm(cfg_for(norm="rmsnorm"))(x), np.float64)
    np.testing.assert_allclose(np.sqrt((y ** 2).mean(-1)), 1.0, rtol=1e-4)
    assert np.abs(y.mean(-1)).min() > 0.1  # RMSNorm keeps the mean direction (no centering)
    assert not hasattr(Norm(cfg_for(norm="rmsnorm")), "bias")


def test_layernorm_zero_mean_unit_variance():
    x = _rows()
    y = np.asarray(Norm(cfg_for(norm="layernorm"))(x), np.float64)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_post_norm_normalises_residual_stream_pre_norm_does_not(norm):
    pos = jnp.arange(T)[None]
    mask = masks.self_attention_mask("encoder", jnp.ones((1, T), jnp.int32), pos)
    x = 100.0 * jax.random.normal(jax.random.key(4), (1, T, 32))
    post = first_block(build_model(cfg_for(norm=norm, norm_position="post"), 0))
    pre = first_block(build_model(cfg_for(norm=norm, norm_position="pre"), 0))
    assert isinstance(post, Block) and post.cfg.norm_position == "post"
    y_post = np.asarray(post(x, mask, pos)[0], np.float64)
    y_pre = np.asarray(pre(x, mask, pos)[0], np.float64)
    rms = lambda a: np.sqrt((a ** 2).mean(-1))  # noqa: E731
    np.testing.assert_allclose(rms(y_post), 1.0, rtol=1e-3)  # post: every row re-normalised
    np.testing.assert_allclose(rms(y_pre) / rms(np.asarray(x)), 1.0, rtol=0.05)  # pre: stays at ~100
    assert rel_diff(y_pre, x) < 0.05  # pre: residual stream passes through almost unchanged


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_final_norm_only_for_pre_norm(arch):
    def has_final_norm(position):
        model = build_model(cfg_for(arch, norm_position=position), 0)
        paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        return {p[0] for p in paths if "final_norm" in p}

    stacks = {"stack"} if arch == "decoder" else {"encoder", "decoder"}
    assert has_final_norm("pre") == stacks
    assert has_final_norm("post") == set()


# ==== activations ===========================================================================
def _mlp(activation):
    mlp = first_block(build_model(cfg_for(activation=activation, init_std=0.2), 0)).mlp
    assert isinstance(mlp, MLP)
    return mlp


def test_relu_mlp_positively_homogeneous_gelu_not():
    x = jax.random.normal(jax.random.key(5), (1, T, 32))
    relu, gelu = _mlp("relu"), _mlp("gelu")
    np.testing.assert_allclose(relu(2 * x), 2 * relu(x), rtol=1e-5, atol=1e-6)
    assert rel_diff(relu(-x), -relu(x)) > 0.1  # homogeneous, but not linear
    assert rel_diff(gelu(2 * x), 2 * gelu(x)) > 0.05


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_mlp_zero_gate_gives_zero(activation):
    x = jax.random.normal(jax.random.key(6), (1, T, 32))
    mlp = _mlp(activation)
    assert mlp.wi[...].shape == (32, 2, 64)
    assert np.abs(np.asarray(mlp(x))).max() > 1e-2
    mlp.wi[...] = mlp.wi[...].at[:, 1, :].set(0.0)
    np.testing.assert_array_equal(np.asarray(mlp(x)), 0.0)


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_mlp_extra_params_counted(arch, activation):
    plain, gated = cfg_for(arch, activation="gelu"), cfg_for(arch, activation=activation)
    n_blocks = gated.enc_layers + gated.dec_layers
    assert count_params(gated).total - count_params(plain).total == n_blocks * 32 * 64
    real = sum(x.size for x in jax.tree.leaves(nnx.state(build_model(gated, 0), nnx.Param)))
    assert real == count_params(gated).total


# ==== attention patterns ====================================================================
def test_strided_one_layer_flow_equals_literal_causal_mask():
    # window 2, stride 3, causal: i - j in {0, 1} or a multiple of 3
    expected = np.array([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],
        [1, 0, 1, 1, 0, 0, 0, 0],
        [0, 1, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 0, 1, 1, 0, 0],
        [1, 0, 0, 1, 0, 1, 1, 0],
        [0, 1, 0, 0, 1, 0, 1, 1],
    ], bool)
    model = build_model(cfg_for("decoder", n_layers=1, attention_pattern="strided", window=2, stride=3), 0)
    np.testing.assert_array_equal(flow(model, make_batch()) > 0, expected)


def test_strided_one_layer_flow_bidirectional():
    i, j = np.indices((T, T))
    expected = (np.abs(i - j) < 2) | ((i - j) % 3 == 0)
    model = build_model(cfg_for("encoder", n_layers=1, attention_pattern="strided", window=2, stride=3), 0)
    np.testing.assert_array_equal(flow(model, make_batch()) > 0, expected)


def test_local_receptive_field_grows_with_depth():
    i, j = np.indices((T, T))
    w = 3
    one = build_model(cfg_for("encoder", n_layers=1, attention_pattern="local", window=w), 0)
    two = build_model(cfg_for("encoder", n_layers=2, attention_pattern="local", window=w), 0)
    np.testing.assert_array_equal(flow(one, make_batch()) > 0, np.abs(i - j) <= w - 1)
    np.testing.assert_array_equal(flow(two, make_batch()) > 0, np.abs(i - j) <= 2 * (w - 1))


# ==== attention probabilities ===============================================================
def _expected_masks(model, batch):
    cfg = model.cfg
    if cfg.arch != "encdec":
        return {"self": model.mask(batch)}
    pattern = (cfg.attention_pattern, cfg.window, cfg.stride)
    return {
        "enc_self": masks.self_attention_mask("encoder", batch["enc_segment_ids"], batch["enc_positions"], None,
                                              *pattern),
        "dec_self": masks.self_attention_mask("decoder", batch["segment_ids"], batch["positions"], None, *pattern),
        "cross": masks.cross_attention_mask(batch["segment_ids"], batch["enc_segment_ids"]),
    }


@pytest.mark.parametrize("arch, extra", [
    ("encoder", {}), ("decoder", {"pos_encoding": "relative"}), ("prefix_lm", {"attention_pattern": "local", "window": 2}),
    ("encdec", {"pos_encoding": "rope"}),
])
def test_attention_probs_zero_exactly_where_masked(arch, extra):
    # two packed examples and two pad tokens on both sides
    segs, enc_segs = [1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 2, 2, 2, 2, 2, 0]
    batch = make_batch(segments=segs, enc_segments=enc_segs, prefix_len=2)
    model = build_model(cfg_for(arch, **extra), 0)
    _, attn = model(batch, return_attention=True)
    expected = _expected_masks(model, batch)
    assert attn.keys() == expected.keys()
    q_seg = {"self": segs, "enc_self": enc_segs, "dec_self": segs, "cross": segs}
    for name, probs in attn.items():
        probs = np.asarray(probs)  # [L, B, H, Tq, Tk]
        allowed = np.broadcast_to(np.asarray(expected[name])[None], probs.shape)  # mask [B, 1, Tq, Tk]
        real_q = (np.asarray(q_seg[name]) > 0)[None, None, None, :]
        rows = np.broadcast_to(real_q[..., None], probs.shape)
        assert np.isfinite(probs).all(), name
        # real query rows: zero exactly where forbidden, positive exactly where allowed
        np.testing.assert_array_equal(probs[rows & ~allowed], 0.0, err_msg=name)
        assert (probs[rows & allowed] > 0).all(), name
        np.testing.assert_allclose((probs * allowed).sum(-1)[..., np.asarray(q_seg[name]) > 0], 1.0, rtol=1e-5)


# ==== dropout ===============================================================================
@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_dropout_active_only_with_key(arch):
    batch = make_batch()
    model = build_model(cfg_for(arch, dropout=0.3), 0)
    reference = np.asarray(build_model(cfg_for(arch, dropout=0.0), 0)(batch))
    eval_out = np.asarray(model(batch))
    np.testing.assert_array_equal(eval_out, reference)  # key=None -> deterministic, no dropout
    np.testing.assert_array_equal(np.asarray(model(batch, dropout_key=None)), reference)
    a = np.asarray(model(batch, dropout_key=jax.random.key(1)))
    a2 = np.asarray(model(batch, dropout_key=jax.random.key(1)))
    b = np.asarray(model(batch, dropout_key=jax.random.key(2)))
    np.testing.assert_array_equal(a, a2)  # same key -> same mask
    assert rel_diff(a, reference) > 1e-2
    assert rel_diff(a, b) > 1e-2
    # rate 0 with a key is also the identity
    no_drop = build_model(cfg_for(arch, dropout=0.0), 0)
    np.testing.assert_array_equal(np.asarray(no_drop(batch, dropout_key=jax.random.key(1))), reference)


# ==== compute dtype =========================================================================
@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_bfloat16_compute_close_to_float32(arch):
    batch = make_batch()
    f32 = build_model(cfg_for(arch, dtype="float32"), 0)
    bf16 = build_model(cfg_for(arch, dtype="bfloat16", param_dtype="float32"), 0)
    for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)):
        assert leaf.dtype == jnp.float32
    ref = np.asarray(f32(batch))
    out, extras = bf16(batch, return_hidden=True)
    assert out.dtype == jnp.float32  # logits are returned in float32
    hidden = extras["hidden"] if arch != "encdec" else extras["dec_hidden"]
    assert hidden.dtype == jnp.bfloat16  # the residual stream really is bf16
    out = np.asarray(out)
    assert np.isfinite(out).all()
    assert not np.array_equal(out, ref)  # a different computation happened
    np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())
    assert rel_diff(out, ref) < 0.05
