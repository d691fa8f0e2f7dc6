"""The training attention paths (archcmp.model.attention_impls) against the explicit one: same outputs and
same gradients with respect to q, k, v and the bias, under causal, padded and prefix masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archcmp.model.attention_impls import blocked_attend, fused_attend, xla_attend
from archcmp.model.config import ModelConfig
from archcmp.model.attention import attend
from archcmp.model.models import build_model

B, T, H, K = 2, 40, 3, 8


def _inputs(seed=0, bias=False):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(ks[i], (B, T, H, K)) for i in range(3))
    # row 0: causal; row 1: causal with its last 9 positions padding (fully masked query rows too)
    causal = np.tril(np.ones((T, T), bool))
    valid = np.ones((B, T), bool)
    valid[1, -9:] = False
    mask = causal[None] & valid[:, None, :] & valid[:, :, None]
    b = jax.random.normal(ks[3], (B, H, T, T)) if bias else None
    return q, k, v, jnp.asarray(mask[:, None]), b


def _loss(fn, q, k, v, mask, b, scale):
    w = jnp.arange(B * T * H * K, dtype=jnp.float32).reshape(B, T, H, K) % 7 - 3.0  # a fixed cotangent
    return jnp.sum(fn(q, k, v, mask, b, scale) * w)


@pytest.mark.parametrize("impl", ["blocked", "xla"])
@pytest.mark.parametrize("bias,scale", [(False, True), (True, False)])
def test_same_outputs_and_gradients(impl, bias, scale):
    q, k, v, mask, b = _inputs(bias=bias)
    explicit = lambda *a: attend(*a[:5], scale=a[5])[0]  # noqa: E731
    other = {"blocked": lambda *a: blocked_attend(*a[:5], scale=a[5], block=16),  # 3 blocks, the last partial
             "xla": lambda *a: xla_attend(*a[:5], scale=a[5])}[impl]
    np.testing.assert_allclose(other(q, k, v, mask, b, scale), explicit(q, k, v, mask, b, scale), atol=2e-5, rtol=2e-5)
    argnums = (0, 1, 2, 4) if bias else (0, 1, 2)
    g_ref = jax.grad(_loss, argnums=[a + 1 for a in argnums])(explicit, q, k, v, mask, b, scale)
    g_new = jax.grad(_loss, argnums=[a + 1 for a in argnums])(other, q, k, v, mask, b, scale)
    for name, a, r in zip("qkvb", g_new, g_ref):
        assert float(jnp.abs(r).max()) > 0.1, name  # a real gradient, not zeros on both sides
        np.testing.assert_allclose(a, r, atol=1e-4, rtol=1e-4, err_msg=name)


def test_padding_rows_stay_finite_and_uniform():
    """A fully masked query row averages all values (NEG_INF is finite) in every path, as explicitly."""
    q, k, v, mask, _ = _inputs()
    out = blocked_attend(q, k, v, mask, block=16)
    np.testing.assert_allclose(out[1, -1], v[1].mean(0), atol=1e-5)
    assert bool(jnp.isfinite(jax.grad(lambda q: blocked_attend(q, k, v, mask).sum())(q)).all())


@pytest.mark.parametrize("arch,pos", [("prefix_lm", "rope"), ("encdec", "relative")])
def test_model_logits_and_grads_match_explicit(arch, pos):
    """Whole models: the blocked default changes neither the logits nor the parameter gradients
    (T5's relative bias gets its gradient through the custom VJP), and return_attention still gives
    the explicit probabilities. (xla is compared function by function above.)"""
    from archcmp.bench.common import make_batch

    cfg = ModelConfig(arch=arch, vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_len=32,
                      pos_encoding=pos)
    batch = {k: jnp.asarray(v) for k, v in make_batch(arch, 2, 24, 64, seed=3).items()}
    from flax import nnx

    def loss_and_grads(impl):
        graphdef, params = nnx.split(build_model(cfg.replace(attention_impl=impl), seed=0))
        f = lambda p: nnx.merge(graphdef, p)(batch).astype(jnp.float32).sum() * 1e-2  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(params)

    (l_ref, g_ref) = loss_and_grads("explicit")
    l_new, g_new = loss_and_grads("blocked")
    np.testing.assert_allclose(l_new, l_ref, rtol=1e-5)
    for a, r in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, r, atol=2e-5, rtol=1e-3)
    model = build_model(cfg.replace(attention_impl="blocked"), seed=0)
    _, extras = model(batch, return_attention=True)
    probs = extras["self"] if arch != "encdec" else extras["dec_self"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_unknown_impl_is_named():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        ModelConfig(arch="decoder", attention_impl="flash")
    with pytest.raises(ValueError, match="attention_impl='nope'"):
        fused_attend("nope", *_inputs()[:4])
