"""The model zoo: information flow, parameter and FLOP accounting, scan vs loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archcmp.model.accounting import count_params, forward_flops, traced_matmul_flops
from archcmp.model.config import ModelConfig
from archcmp.model.models import build_model

ARCHS = ["encoder", "decoder", "prefix_lm", "encdec"]


def make_batch(T=6, S=5, prefix_len=3, segments=None, enc_segments=None):
    """One row; every position gets a distinct token id so gradients w.r.t. embedding-table
    rows are gradients w.r.t. the embedding at one position."""
    seg = jnp.ones((1, T), jnp.int32) if segments is None else jnp.asarray([segments], jnp.int32)
    pos = _positions(seg)
    enc_seg = jnp.ones((1, S), jnp.int32) if enc_segments is None else jnp.asarray([enc_segments], jnp.int32)
    return {
        "inputs": jnp.arange(10, 10 + T, dtype=jnp.int32)[None],
        "segment_ids": seg,
        "positions": pos,
        "prefix_mask": (pos < prefix_len) & (seg > 0),
        "enc_inputs": jnp.arange(40, 40 + S, dtype=jnp.int32)[None],
        "enc_segment_ids": enc_seg,
        "enc_positions": _positions(enc_seg),
    }


def _positions(seg):
    seg = np.asarray(seg)[0]
    out = np.zeros_like(seg)
    for i in range(1, len(seg)):
        out[i] = out[i - 1] + 1 if seg[i] == seg[i - 1] else 0
    return jnp.asarray(out)[None]


def flow(model, batch, source="inputs"):
    """|d (logits[i] · r) / d embedding[j]| as a [T_out, T_in] matrix (one jitted Jacobian)."""
    graphdef, params = nnx.split(model)
    ids = batch[source][0]
    r = jax.random.normal(jax.random.key(1), (model.cfg.vocab_size,))

    def outputs(table):
        p = jax.tree.map(lambda x: x, params)
        p["embed"]["table"] = p["embed"]["table"].replace(table)
        return nnx.merge(graphdef, p)(batch)[0] @ r  # [T]

    jac = jax.jit(jax.jacrev(outputs))(params["embed"]["table"][...])  # [T, V, D]
    return np.abs(np.asarray(jac[:, ids])).sum(-1)


def cfg_for(arch, **kw):
    base = dict(arch=arch, vocab_size=64, d_model=32, n_heads=4, d_ff=64, n_layers=2, max_len=16,
                tie_embeddings=False)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm"])
def test_gradient_flow_single_stack(arch):
    batch = make_batch(T=6, prefix_len=3)
    got = flow(build_model(cfg_for(arch), 0), batch) > 0
    i, j = np.indices((6, 6))
    allowed = {"encoder": np.ones((6, 6), bool), "decoder": j <= i, "prefix_lm": (j <= i) | (j < 3)}[arch]
    np.testing.assert_array_equal(got, allowed)


def test_gradient_flow_encdec():
    batch = make_batch(T=5, S=4)
    model = build_model(cfg_for("encdec"), 0)
    i, j = np.indices((5, 5))
    np.testing.assert_array_equal(flow(model, batch, "inputs") > 0, j <= i)  # decoder self: causal
    assert (flow(model, batch, "enc_inputs") > 0).all()  # every decoder token sees all encoder tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_no_flow_across_packed_segments(arch):
    segs = [1, 1, 1, 2, 2, 2]
    batch = make_batch(T=6, S=6, prefix_len=2, segments=segs, enc_segments=[1, 1, 1, 2, 2, 2])
    model = build_model(cfg_for(arch), 0)
    seg = np.array(segs)
    cross_segment = seg[:, None] != seg[None, :]
    got = flow(model, batch, "inputs")
    assert (got[cross_segment] == 0).all()
    if arch == "encdec":
        assert (flow(model, batch, "enc_inputs")[cross_segment] == 0).all()
        assert (flow(model, batch, "enc_inputs")[~cross_segment] > 0).all()


def test_local_pattern_blocks_distant_tokens_in_one_layer():
    batch = make_batch(T=6)
    model = build_model(cfg_for("encoder", n_layers=1, attention_pattern="local", window=2), 0)
    i, j = np.indices((6, 6))
    np.testing.assert_array_equal(flow(model, batch) > 0, np.abs(i - j) < 2)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("extra", [{}, {"tie_embeddings": True, "activation": "swiglu", "norm": "rmsnorm"},
                                   {"pos_encoding": "relative", "norm_position": "post", "activation": "geglu"},
                                   {"pos_encoding": "rope", "head_dim": 16}])
def test_param_count_matches_closed_form(arch, extra):
    cfg = cfg_for(arch, **extra)
    model = build_model(cfg, 0)
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == count_params(cfg).total


def test_param_formula_by_hand_decoder():
    cfg = ModelConfig(arch="decoder", vocab_size=100, d_model=16, n_heads=2, d_ff=32, n_layers=3, max_len=8)
    per_block = 4 * 16 * 16 + 2 * 16 * 32 + 2 * (2 * 16)
    expected = 100 * 16 + 8 * 16 + 3 * per_block + 2 * 16
    assert count_params(cfg).total == expected
    assert count_params(cfg).nonembedding == 3 * per_block + 2 * 16


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scan", [True, False])
def test_flops_formula_matches_traced_matmuls(arch, scan):
    cfg = cfg_for(arch, scan_layers=scan, activation="swiglu", n_layers=3)
    model = build_model(cfg, 0)
    graphdef, params = nnx.split(model)
    batch = make_batch(T=12, S=7)
    traced = traced_matmul_flops(lambda p, b: nnx.merge(graphdef, p)(b), params, batch)
    formula = forward_flops(cfg, 12, 7 if arch == "encdec" else 0)
    assert abs(traced - formula) / traced < 0.05, (traced, formula)


@pytest.mark.parametrize("arch", ARCHS)
def test_scan_and_loop_give_same_outputs(arch):
    batch = make_batch(T=6, S=5)
    scanned = build_model(cfg_for(arch, n_layers=3), 0)
    looped = build_model(cfg_for(arch, n_layers=3, scan_layers=False), 0)
    a, attn_a = scanned(batch, return_attention=True)
    b, attn_b = looped(batch, return_attention=True)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert attn_a.keys() == attn_b.keys()
    for k in attn_a:
        np.testing.assert_allclose(np.asarray(attn_a[k]), np.asarray(attn_b[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_returning_attention_does_not_change_logits(arch):
    batch = make_batch(T=6, S=5)
    model = build_model(cfg_for(arch, attention_impl="explicit"), 0)
    plain = model(batch)
    with_attn, attn = model(batch, return_attention=True)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(with_attn))
    # the default (blocked) path without probabilities: the same logits up to float rounding
    blocked = build_model(cfg_for(arch), 0)(batch)
    np.testing.assert_allclose(np.asarray(blocked), np.asarray(with_attn), rtol=1e-5, atol=1e-5)
    for name, probs in attn.items():
        assert probs.shape[:3] == (2, 1, 4), name  # [L, B, H, Tq, Tk]
        np.testing.assert_allclose(np.asarray(probs.sum(-1))[..., :], 1.0, rtol=1e-5)


def test_encdec_encode_decode_equals_call():
    batch = make_batch(T=5, S=4)
    model = build_model(cfg_for("encdec"), 0)
    memory = model.encode(batch["enc_inputs"], batch["enc_segment_ids"], batch["enc_positions"])
    assert memory.shape == (1, 4, 32)
    np.testing.assert_array_equal(np.asarray(model.decode(memory, batch)), np.asarray(model(batch)))


@pytest.mark.parametrize("pe", ["rope", "learned"])
def test_encdec_shares_one_embedding(pe):
    model = build_model(cfg_for("encdec", pos_encoding=pe), 0)
    params = {path: v for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    # exactly one [V, D] token table (the untied head is [D, V]); learned positions add one table per stack
    assert [p for p, v in params.items() if v[...].shape == (64, 32)] == [("embed", "table")]
    tables = sorted(p for p in params if p[-1] == "table")
    extra = [("decoder", "positions", "table"), ("encoder", "positions", "table")] if pe == "learned" else []
    assert tables == sorted([("embed", "table"), *extra])
    # and both stacks read it: the loss reaches the rows of the encoder's and the decoder's tokens
    batch = make_batch(T=5, S=4)
    graphdef, state = nnx.split(model)
    grads = jax.grad(lambda s: nnx.merge(graphdef, s)(batch).sum())(state)
    rows = np.abs(np.asarray(grads["embed"]["table"][...])).sum(-1) > 0
    np.testing.assert_array_equal(np.flatnonzero(rows), [*range(10, 15), *range(40, 44)])


@pytest.mark.parametrize("arch", ARCHS)
def test_remat_policies_give_the_same_loss_and_gradients(arch):
    """model.remat only changes what the backward pass keeps; the numbers must not move."""
    batch = make_batch(T=6, S=5)
    target = jnp.arange(6, dtype=jnp.int32)[None] % 7

    def loss_and_grads(remat):
        graphdef, params = nnx.split(build_model(cfg_for(arch, n_layers=3, remat=remat), 0))

        def loss(p):
            logits = nnx.merge(graphdef, p)(batch)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1).mean()

        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        return float(value), jax.tree.leaves(grads)

    ref_loss, ref_grads = loss_and_grads("none")
    assert all(float(jnp.abs(g).max()) > 0 for g in ref_grads[:3])  # something to compare
    for remat in ("dots", "full"):
        value, grads = loss_and_grads(remat)
        assert value == pytest.approx(ref_loss, rel=1e-6)
        for a, b in zip(ref_grads, grads, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_remat_setting_is_validated():
    with pytest.raises(ValueError, match="remat"):
        cfg_for("decoder", remat="some")
