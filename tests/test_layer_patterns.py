"""Per-layer attention patterns (model.layer_patterns): layer i attends with the pattern asked,
scanned or looped, in every stack; bad names fail by key and value."""
import numpy as np
import pytest

from archcmp.model.config import ModelConfig
from archcmp.model.models import build_model

T, W = 6, 2
CAUSAL = np.tril(np.ones((T, T), bool))
# local band of width 2 inside the causal triangle: key j visible from query i when 0 <= i - j < 2
BAND = np.array([[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [0, 1, 1, 0, 0, 0],
                 [0, 0, 1, 1, 0, 0],
                 [0, 0, 0, 1, 1, 0],
                 [0, 0, 0, 0, 1, 1]], bool)
FULL = np.ones((T, T), bool)
SYM_BAND = np.abs(np.arange(T)[:, None] - np.arange(T)[None, :]) < W


def _batch(enc=False):
    ids = np.arange(10, 10 + T, dtype=np.int32)[None]
    seg, pos = np.ones((1, T), np.int32), np.arange(T, dtype=np.int32)[None]
    b = {"inputs": ids, "segment_ids": seg, "positions": pos}
    if enc:
        b.update(enc_inputs=ids, enc_segment_ids=seg, enc_positions=pos)
    return b


def _model(arch, scan, n_layers=4, **kw):
    return build_model(ModelConfig(arch=arch, vocab_size=32, d_model=16, n_heads=2, d_ff=32, n_layers=n_layers,
                                   max_len=16, window=W, layer_patterns=("dense", "local"), scan_layers=scan,
                                   pos_encoding="rope", init_std=0.3, **kw), 0)


@pytest.mark.parametrize("scan", [True, False])
def test_decoder_layer_i_uses_the_pattern_asked(scan):
    _, extras = _model("decoder", scan)(_batch(), return_attention=True)
    probs = np.asarray(extras["self"])[:, 0]  # [L, H, T, T]
    for layer, want in enumerate([CAUSAL, BAND, CAUSAL, BAND]):  # dense, local, dense, local
        for h in range(probs.shape[1]):
            np.testing.assert_array_equal(probs[layer, h] > 0, want, err_msg=f"layer {layer} head {h}")


def test_encdec_each_stack_cycles_its_own_layers():
    _, extras = _model("encdec", False, n_layers=2)(_batch(enc=True), return_attention=True)
    enc, dec = np.asarray(extras["enc_self"])[:, 0, 0], np.asarray(extras["dec_self"])[:, 0, 0]
    np.testing.assert_array_equal(enc[0] > 0, FULL)
    np.testing.assert_array_equal(enc[1] > 0, SYM_BAND)
    np.testing.assert_array_equal(dec[0] > 0, CAUSAL)
    np.testing.assert_array_equal(dec[1] > 0, BAND)


def test_cached_decoding_uses_each_layers_pattern():
    """The KV-cached path builds the same per-layer masks as the full forward pass."""
    from archcmp.decoding.generate import DecodeConfig, run_lm

    model = _model("decoder", False)
    prompts = [np.array([10, 11, 12]), np.array([13, 14, 15, 16, 17])]
    cached, _ = run_lm(model, prompts, DecodeConfig(max_new_tokens=6))
    uncached, _ = run_lm(model, prompts, DecodeConfig(max_new_tokens=6, use_cache=False))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))


def test_layer_patterns_config_errors_and_ids():
    cfg = ModelConfig(layer_patterns=["dense", "local", "strided"], n_layers=4)
    assert cfg.layer_patterns == ("dense", "local", "strided")  # stored hashable
    assert cfg.patterns == ("dense", "local", "strided") and cfg.layer_pattern_ids(4) == [0, 1, 2, 0]
    assert ModelConfig(attention_pattern="local").layer_pattern_ids(3) == [0, 0, 0]
    with pytest.raises(ValueError, match=r"model\.layer_patterns=\['dense', 'banded'\]: unknown pattern 'banded'"):
        ModelConfig(layer_patterns=["dense", "banded"])
    with pytest.raises(ValueError, match=r"model\.layer_patterns=\[\]: must be a non-empty list"):
        ModelConfig(layer_patterns=[])
