"""ModelConfig validation: a bad config fails at construction with a ValueError that names the
field and the bad value (``model.<field>=<value!r>: why``), before any JAX code runs."""
import dataclasses
import re
import subprocess
import sys

import pytest

from archcmp.model.config import (ACTIVATIONS, ARCHS, ATTENTION_PATTERNS, NORM_POSITIONS, NORMS, POS_ENCODINGS,
                            ModelConfig)


def field_value(field, value):
    """Regex for the ``model.<field>=<repr(value)>`` prefix every config error starts with."""
    return re.escape(f"model.{field}={value!r}")


# ---- choices -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, bad, options", [
    ("arch", "gpt", ARCHS),
    ("arch", "Decoder", ARCHS),  # names are case-sensitive
    ("pos_encoding", "alibi", POS_ENCODINGS),
    ("norm", "batchnorm", NORMS),
    ("norm_position", "sandwich", NORM_POSITIONS),
    ("activation", "tanh", ACTIVATIONS),
    ("attention_pattern", "sliding", ATTENTION_PATTERNS),
    ("dtype", "float64", None),
    ("param_dtype", "int8", None),
])
def test_unknown_name_names_field_value_and_options(field, bad, options):
    with pytest.raises(ValueError, match=field_value(field, bad)) as info:
        ModelConfig(**{field: bad})
    assert "unknown name" in str(info.value)
    for option in options or ():
        assert repr(option) in str(info.value)  # the message lists what would have been valid


# ---- integer fields ----------------------------------------------------------------------
@pytest.mark.parametrize("field, bad", [
    ("n_layers", 0),
    ("n_layers", -1),
    ("d_ff", -4),
    ("d_ff", 0),
    ("d_model", -32),
    ("vocab_size", 0),
    ("max_len", -1),
    ("window", 0),
    ("stride", 0),
    ("rel_buckets", -2),
    ("n_heads", True),  # bool is an int subclass, but never a valid size
    ("n_layers", False),
    ("n_layers", 2.0),  # floats are rejected even when integral
    ("d_model", "64"),
    ("head_dim", 0),
    ("head_dim", -8),
])
def test_sizes_must_be_positive_integers(field, bad):
    with pytest.raises(ValueError, match=field_value(field, bad) + ".*positive integer"):
        ModelConfig(**{field: bad})


def test_d_model_not_divisible_by_n_heads():
    with pytest.raises(ValueError, match=field_value("n_heads", 5)) as info:
        ModelConfig(d_model=64, n_heads=5)
    assert "d_model=64" in str(info.value) and "not divisible" in str(info.value)
    # an explicit head_dim lifts the divisibility requirement
    cfg = ModelConfig(d_model=64, n_heads=5, head_dim=16)
    assert cfg.head_size == 16 and cfg.qkv_dim == 80


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_dropout_must_be_in_unit_interval(bad):
    with pytest.raises(ValueError, match=re.escape(f"model.dropout={bad!r}") + r".*\[0, 1\)"):
        ModelConfig(dropout=bad)


@pytest.mark.parametrize("field", ["norm_eps", "init_std"])
@pytest.mark.parametrize("bad", [0.0, -1e-6])
def test_positive_floats(field, bad):
    with pytest.raises(ValueError, match=field_value(field, bad) + ".*> 0"):
        ModelConfig(**{field: bad})


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm"])
@pytest.mark.parametrize("field", ["n_enc_layers", "n_dec_layers"])
def test_encdec_depths_rejected_on_single_stack(arch, field):
    with pytest.raises(ValueError, match=field_value(field, 3) + ".*only used by arch='encdec'") as info:
        ModelConfig(arch=arch, **{field: 3})
    assert f"arch={arch!r}" in str(info.value)


@pytest.mark.parametrize("field", ["n_enc_layers", "n_dec_layers"])
def test_encdec_depths_must_be_positive(field):
    with pytest.raises(ValueError, match=field_value(field, 0) + ".*positive integer"):
        ModelConfig(arch="encdec", **{field: 0})


def test_rope_needs_even_head_dim_derived():
    # 12 / 4 = 3 features per head: the derived head size is odd
    with pytest.raises(ValueError, match=field_value("head_dim", 3) + ".*RoPE.*even"):
        ModelConfig(pos_encoding="rope", d_model=12, n_heads=4)


def test_rope_needs_even_head_dim_explicit():
    with pytest.raises(ValueError, match=field_value("head_dim", 5) + ".*RoPE"):
        ModelConfig(pos_encoding="rope", d_model=32, n_heads=4, head_dim=5)
    # the same odd head size is fine without RoPE
    assert ModelConfig(pos_encoding="learned", d_model=32, n_heads=4, head_dim=5).head_size == 5


def test_sinusoidal_needs_even_d_model():
    with pytest.raises(ValueError, match=field_value("d_model", 15) + ".*sinusoidal"):
        ModelConfig(pos_encoding="sinusoidal", d_model=15, n_heads=3)
    ModelConfig(pos_encoding="learned", d_model=15, n_heads=3)  # odd d_model is fine otherwise


# ---- from_mapping / replace --------------------------------------------------------------
def test_from_mapping_rejects_unknown_key_by_name():
    with pytest.raises(ValueError, match=r"model\.d_modle\b.*unknown model config key") as info:
        ModelConfig.from_mapping({"arch": "decoder", "d_modle": 32})
    assert "'d_model'" in str(info.value)  # known keys are listed, so the typo is easy to spot


def test_from_mapping_validates_values_and_round_trips():
    with pytest.raises(ValueError, match=field_value("norm", "l2")):
        ModelConfig.from_mapping({"norm": "l2"})
    cfg = ModelConfig(arch="encdec", n_enc_layers=3, pos_encoding="rope", activation="swiglu")
    assert ModelConfig.from_mapping(cfg.to_dict()) == cfg


def test_replace_revalidates():
    cfg = ModelConfig(d_model=32, n_heads=4)
    with pytest.raises(ValueError, match=field_value("n_heads", 3)):
        cfg.replace(n_heads=3)
    assert cfg.replace(n_heads=8).head_size == 4


def test_config_validation_never_imports_jax():
    """Validation is pure Python: a bad config fails before anything can be traced or compiled."""
    code = ("import sys\n"
            "from archcmp.model.config import ModelConfig\n"
            "try:\n    ModelConfig(d_model=30, n_heads=4)\nexcept ValueError:\n    pass\n"
            "else:\n    raise SystemExit('no error')\n"
            "assert 'jax' not in sys.modules, 'config imported jax'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- derived properties ------------------------------------------------------------------
def test_head_size_and_qkv_dim():
    cfg = ModelConfig(d_model=32, n_heads=4)
    assert (cfg.head_size, cfg.qkv_dim) == (8, 32)
    cfg = ModelConfig(d_model=32, n_heads=4, head_dim=16)  # wider heads than d_model / H
    assert (cfg.head_size, cfg.qkv_dim) == (16, 64)


def test_encdec_layer_defaults_and_overrides():
    cfg = ModelConfig(arch="encdec", n_layers=3)
    assert (cfg.enc_layers, cfg.dec_layers) == (3, 3)
    cfg = ModelConfig(arch="encdec", n_layers=3, n_enc_layers=5)
    assert (cfg.enc_layers, cfg.dec_layers) == (5, 3)
    cfg = ModelConfig(arch="encdec", n_layers=3, n_dec_layers=1)
    assert (cfg.enc_layers, cfg.dec_layers) == (3, 1)
    cfg = ModelConfig(arch="encdec", n_layers=3, n_enc_layers=2, n_dec_layers=4)
    assert (cfg.enc_layers, cfg.dec_layers) == (2, 4)


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm"])
def test_single_stack_layers(arch):
    cfg = ModelConfig(arch=arch, n_layers=5)
    assert (cfg.enc_layers, cfg.dec_layers) == (5, 0)


def test_gated_and_causal_flags():
    assert [ModelConfig(activation=a).gated for a in ACTIVATIONS] == [False, False, True, True, False]
    assert [ModelConfig(arch=a).causal for a in ARCHS] == [False, True, True, True]


def test_config_is_frozen_and_hashable():
    cfg = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError, match="d_model"):
        cfg.d_model = 8  # type: ignore[misc]
    assert hash(cfg) == hash(ModelConfig())


# ---- geometry and type checks ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_rope_theta_must_be_positive(bad):
    with pytest.raises(ValueError, match=field_value("rope_theta", bad)):
        ModelConfig(pos_encoding="rope", rope_theta=bad)


@pytest.mark.parametrize("kw", [{"rel_buckets": 2}, {"rel_buckets": 32, "rel_max_distance": 8}])
def test_relative_bucket_geometry_validated(kw):
    with pytest.raises(ValueError, match="model.rel_"):
        ModelConfig(pos_encoding="relative", **kw)


@pytest.mark.parametrize("field", ["tie_embeddings", "scan_layers"])
def test_bool_fields_reject_strings(field):
    with pytest.raises(ValueError, match=field_value(field, "no")):
        ModelConfig(**{field: "no"})


@pytest.mark.parametrize("bad", [True, "0.1", None])
def test_dropout_rejects_non_numbers(bad):
    with pytest.raises(ValueError, match=field_value("dropout", bad)):
        ModelConfig(dropout=bad)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_sequence_longer_than_position_table_raises_before_compiling(pos):
    import jax.numpy as jnp
    from archcmp.model.models import build_model

    model = build_model(ModelConfig(pos_encoding=pos, max_len=8, n_layers=1, d_model=16, d_ff=32,
                                    vocab_size=32), seed=0)
    T = 9
    batch = {"inputs": jnp.full((1, T), 5, jnp.int32), "segment_ids": jnp.ones((1, T), jnp.int32),
             "positions": jnp.arange(T, dtype=jnp.int32)[None], "prefix_mask": jnp.zeros((1, T), bool)}
    with pytest.raises(ValueError, match=r"model\.max_len=8: sequence of 9 tokens"):
        model(batch)
    assert model({k: v[:, :8] for k, v in batch.items()}).shape == (1, 8, 32)  # 8 tokens fit
