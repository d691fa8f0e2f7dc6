"""Literal 0/1 mask matrices for every architecture (t5x-style mask tests)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archcmp.model import masks


def _m(mask):
    """[1, 1, T, S] bool -> int matrix for readable comparison."""
    return np.asarray(mask[0, 0]).astype(int)


SEG = jnp.array([[1, 1, 1, 1, 0]])  # one example of 4 tokens + 1 pad
POS = jnp.array([[0, 1, 2, 3, 0]])


def test_encoder_mask_is_bidirectional_over_real_tokens():
    expected = np.array([
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("encoder", SEG, POS)), expected)


def test_decoder_mask_is_lower_triangular():
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("decoder", SEG, POS)), expected)


def test_prefix_lm_mask_bidirectional_prefix_then_causal():
    prefix = jnp.array([[True, True, False, False, False]])
    expected = np.array([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("prefix_lm", SEG, POS, prefix)), expected)


def test_packed_prefix_lm_two_examples_of_different_prefix_lengths():
    # example 1: 4 tokens, prefix 3; example 2: 3 tokens, prefix 1; one pad at the end
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
    prefix = jnp.array([[1, 1, 1, 0, 1, 0, 0, 0]], dtype=bool)
    expected = np.array([
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("prefix_lm", seg, pos, prefix)), expected)


def test_packed_decoder_never_crosses_segments():
    seg = jnp.array([[1, 1, 2, 2, 2]])
    pos = jnp.array([[0, 1, 0, 1, 2]])
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("decoder", seg, pos)), expected)


def test_encdec_cross_mask_follows_segments():
    dec_seg = jnp.array([[1, 1, 2, 0]])
    enc_seg = jnp.array([[1, 2, 2, 0, 0]])
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.cross_attention_mask(dec_seg, enc_seg)), expected)


def test_padding_mask_literal():
    seg = jnp.array([[1, 2, 0]])
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(_m(masks.padding_mask(seg)), expected)


def test_local_band_causal_window_2():
    seg = jnp.ones((1, 5), jnp.int32)
    pos = jnp.arange(5)[None]
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ])
    got = masks.self_attention_mask("decoder", seg, pos, pattern="local", window=2)
    np.testing.assert_array_equal(_m(got), expected)


def test_local_band_bidirectional_window_2():
    pos = jnp.arange(4)[None]
    expected = np.array([
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1],
        [0, 0, 1, 1],
    ])
    np.testing.assert_array_equal(_m(masks.local_mask(pos, 2, causal=False)), expected)


def test_strided_causal_pattern_gpt3_style():
    # local window 2 OR offset a multiple of 3, causal
    seg = jnp.ones((1, 7), jnp.int32)
    pos = jnp.arange(7)[None]
    expected = np.array([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0],
        [1, 0, 1, 1, 0, 0, 0],
        [0, 1, 0, 1, 1, 0, 0],
        [0, 0, 1, 0, 1, 1, 0],
        [1, 0, 0, 1, 0, 1, 1],
    ])
    got = masks.self_attention_mask("decoder", seg, pos, pattern="strided", window=2, stride=3)
    np.testing.assert_array_equal(_m(got), expected)


def test_combine_masks_is_and():
    a = jnp.array([[[[1, 1], [0, 1]]]], dtype=bool)
    b = jnp.array([[[[1, 0], [1, 1]]]], dtype=bool)
    np.testing.assert_array_equal(_m(masks.combine_masks(a, None, b)), np.array([[1, 0], [0, 1]]))


def test_masks_are_boolean():
    assert masks.self_attention_mask("decoder", SEG, POS).dtype == jnp.bool_


# ---- packing meets the encoder and the sparse patterns ------------------------------------------
def test_packed_encoder_is_block_diagonal():
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    pos = jnp.array([[0, 1, 2, 0, 1, 0]])
    expected = np.array([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(_m(masks.self_attention_mask("encoder", seg, pos)), expected)


def test_packed_local_decoder_band_restarts_per_segment():
    # window 2, causal; row 3 (position 0 of example 2) must not see row 0 (also position 0)
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 0]])
    pos = jnp.array([[0, 1, 2, 0, 1, 2, 0]])
    expected = np.array([
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    got = masks.self_attention_mask("decoder", seg, pos, pattern="local", window=2)
    np.testing.assert_array_equal(_m(got), expected)


def test_packed_strided_encoder_pattern_stays_in_its_segment():
    # window 1 (the diagonal) OR even offsets, bidirectional, two packed examples
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2]])
    pos = jnp.array([[0, 1, 2, 3, 0, 1, 2]])
    expected = np.array([
        [1, 0, 1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1, 0, 1],
    ])
    got = masks.self_attention_mask("encoder", seg, pos, pattern="strided", window=1, stride=2)
    np.testing.assert_array_equal(_m(got), expected)


def test_packed_strided_prefix_lm():
    # (causal OR key in prefix) AND (|i - j| < 2 OR (i - j) % 3 == 0) AND same segment;
    # example 1: 4 tokens, prefix 2; example 2: 3 tokens, prefix 2; one pad
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
    pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
    prefix = jnp.array([[1, 1, 0, 0, 1, 1, 0, 0]], dtype=bool)
    expected = np.array([
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],  # offset 2 to position 0: outside the band, not a multiple of 3
        [1, 0, 1, 1, 0, 0, 0, 0],  # offset 3 to position 0: the strided column
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ])
    got = masks.self_attention_mask("prefix_lm", seg, pos, prefix, pattern="strided", window=2, stride=3)
    np.testing.assert_array_equal(_m(got), expected)


# ---- the KV-cached decoding mask: new tokens against cache slots ------------------------------------
def test_cached_mask_literal_with_empty_slots():
    # a 6-slot cache holding a 3-token prompt (slots 0-2); the 4th token is the query; slots 4-5 are empty
    key_seg = jnp.array([[1, 1, 1, 1, 0, 0]])
    key_pos = jnp.array([[0, 1, 2, 3, 0, 0]])
    got = masks.self_attention_mask("decoder", jnp.array([[1]]), jnp.array([[3]]),
                                    key_segment_ids=key_seg, key_positions=key_pos)
    np.testing.assert_array_equal(_m(got), [[1, 1, 1, 1, 0, 0]])
    got = masks.self_attention_mask("decoder", jnp.array([[1]]), jnp.array([[3]]), pattern="local", window=2,
                                    key_segment_ids=key_seg, key_positions=key_pos)
    np.testing.assert_array_equal(_m(got), [[0, 0, 1, 1, 0, 0]])


@pytest.mark.parametrize("kind", ["decoder", "prefix_lm"])
@pytest.mark.parametrize("pattern", [dict(pattern="dense"), dict(pattern="local", window=2),
                                     dict(pattern="strided", window=2, stride=3)])
def test_cached_rows_equal_the_full_mask(kind, pattern):
    """Queries t: against all keys give rows t: of the full mask, for every split t (prefill t
    tokens, then the rest one at a time or all together), packed, left-padded and sparse."""
    seg = jnp.array([[0, 0, 1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    pos = jnp.array([[0, 0, 0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    prefix = jnp.array([[0, 0, 1, 1, 1, 0, 0, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=bool)
    # one compiled program per query shape (op-by-op dispatch would compile every op at every shape)
    mask = jax.jit(masks.self_attention_mask, static_argnums=0, static_argnames=("pattern", "window", "stride"))
    full = np.asarray(mask(kind, seg, pos, prefix, **pattern))  # [B, 1, T, T]
    T = seg.shape[1]
    for t in range(T):
        for stop in (t + 1, T):
            got = mask(kind, seg[:, t:stop], pos[:, t:stop], prefix, **pattern,
                       key_segment_ids=seg, key_positions=pos)
            np.testing.assert_array_equal(np.asarray(got), full[:, :, t:stop], err_msg=f"t={t} stop={stop}")
    assert full.sum() < full.size // 2  # the masks are not all-visible: the comparison has teeth
