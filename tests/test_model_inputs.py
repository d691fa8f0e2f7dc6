"""Bad model inputs fail loudly: token ids outside the vocabulary, a missing prefix_mask, a full KV
cache. (JAX would clamp an out-of-range gather index or cache slot and carry on silently.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from archcmp.model.config import ModelConfig
from archcmp.data import vocab
from archcmp.decoding.generate import DecodeConfig, generate
from archcmp.model.models import build_model

V, T = 40, 6


def model_for(arch, **kw):
    return build_model(ModelConfig(arch=arch, vocab_size=V, d_model=16, n_heads=2, d_ff=32, n_layers=1,
                                   max_len=16, pos_encoding="rope", **kw), seed=0)


def batch_for(arch, bad_key=None, bad_id=V):
    ids = jnp.full((1, T), vocab.N_SPECIAL, jnp.int32)
    batch = {"inputs": ids, "segment_ids": jnp.ones((1, T), jnp.int32), "positions": jnp.arange(T)[None],
             "prefix_mask": jnp.arange(T)[None] < 2,
             "enc_inputs": ids, "enc_segment_ids": jnp.ones((1, T), jnp.int32), "enc_positions": jnp.arange(T)[None]}
    if bad_key:
        batch[bad_key] = batch[bad_key].at[0, 3].set(bad_id)
    return batch


@pytest.mark.parametrize("arch,key", [("decoder", "inputs"), ("encoder", "inputs"), ("prefix_lm", "inputs"),
                                      ("encdec", "inputs"), ("encdec", "enc_inputs")])
@pytest.mark.parametrize("bad_id", [V, V + 7, -1])
def test_out_of_vocab_ids_are_a_clear_error(arch, key, bad_id):
    model = model_for(arch)
    model(batch_for(arch))  # in range: fine
    with pytest.raises(ValueError, match=rf"batch\['{key}'\] holds token id {bad_id}: outside model.vocab_size={V}"):
        model(batch_for(arch, key, bad_id))


def test_out_of_vocab_ids_under_jit_poison_the_logits_instead_of_clamping():
    """Under jit ids are tracers (no host check): an out-of-range id gives NaN logits for its row
    (so the loss is NaN), never the embedding of the last token (JAX's default clamp)."""
    model = model_for("decoder")
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))
    good, bad = batch_for("decoder"), batch_for("decoder", "inputs", V)
    two = {k: jnp.concatenate([bad[k], good[k]]) for k in good}  # row 0 holds id V at position 3
    logits = np.asarray(run(state, two))
    assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()
    assert np.isfinite(np.asarray(run(state, batch_for("decoder", "inputs", V - 1)))).all()  # the last id is fine


def test_decode_checks_prompt_ids_on_the_host():
    for arch in ("decoder", "encdec", "encoder"):
        model = model_for(arch)
        with pytest.raises(ValueError, match=rf"holds token id {V + 3}: outside model.vocab_size={V}"):
            generate(model, [np.array([vocab.N_SPECIAL, V + 3])], DecodeConfig(max_new_tokens=2))


def test_missing_prefix_mask_is_a_clear_error_with_and_without_cache():
    model = model_for("prefix_lm")
    batch = batch_for("prefix_lm")
    del batch["prefix_mask"]
    with pytest.raises(ValueError, match=r"arch='prefix_lm' needs batch\['prefix_mask'\]"):
        model(batch)
    with pytest.raises(ValueError, match=r"arch='prefix_lm' needs batch\['prefix_mask'\]"):
        model(batch, cache=model.init_cache(1, 8))  # before: silently treated as a decoder prompt
    with pytest.raises(ValueError, match=r"arch='encdec' needs batch\['enc_segment_ids'\]"):
        model_for("encdec").decode(jnp.zeros((1, T, 16)), {k: v for k, v in batch_for("encdec").items()
                                                           if k != "enc_segment_ids"})


@pytest.mark.parametrize("arch", ["decoder", "prefix_lm", "encdec"])
def test_kv_cache_overflow_is_a_clear_error(arch):
    model = model_for(arch)
    batch = batch_for(arch)
    if arch == "encdec":
        memory = model.encode(batch["enc_inputs"], batch["enc_segment_ids"], batch["enc_positions"])
        cache = model.init_cache(memory, batch["enc_segment_ids"], T + 1)
    else:
        cache = model.init_cache(1, T + 1)
    _, cache = model(batch, cache=cache)  # T of T + 1 slots used
    one = {k: v[:, :1] for k, v in batch.items()}
    one["positions"] = jnp.full((1, 1), T)
    _, cache = model(one, cache=cache)  # the last slot: fine
    one["positions"] = jnp.full((1, 1), T + 1)
    with pytest.raises(ValueError, match=rf"KV cache overflow: 1 new token\(s\) at slot {T + 1} of a {T + 1}-slot cache"):
        model(one, cache=cache)
    with pytest.raises(ValueError, match=r"KV cache overflow"):
        model(batch, cache=model.init_cache(1, T - 1) if arch != "encdec" else
              model.init_cache(memory, batch["enc_segment_ids"], T - 1))
