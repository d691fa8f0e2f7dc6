"""``task=induction`` with ``layout=pairs``: trigger -> answer pairs scattered through random filler,
fresh per example (only a previous-token head feeding an induction head predicts the later answers)."""
from types import SimpleNamespace

import numpy as np
import pytest

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.tasks import hashed_split, make_task

PAIRS = dict(n_symbols=16, tokens="symbols", layout="pairs", pairs=3, occurrences=3, filler=10)


def _pairs_of(body: np.ndarray, k: int, n: int) -> dict[int, int]:
    """trigger -> answer, recovered independently: the symbols occurring exactly n times, each
    time followed by one same token (pairs the generator placed satisfy this by construction)."""
    out = {}
    for s in set(body.tolist()):
        at = np.flatnonzero(body == s)
        if len(at) == n and at[-1] + 1 < len(body) and len(set(body[at + 1].tolist())) == 1:
            out[s] = int(body[at[0] + 1])
    return out


def test_pairs_layout_places_each_pair_occurrences_times_in_filler_without_triggers():
    task = make_task("induction", **PAIRS)
    assert task.max_tokens == 2 * 3 * 3 + 10 + 1
    answers_seen = set()
    for ex in task.examples("validation", seed=0, limit=40):
        assert len(ex.inputs) == 0 and ex.targets[-1] == vocab.EOS and len(ex.targets) == 29
        body = ex.targets[:-1]
        assert body.min() >= vocab.N_SPECIAL and body.max() < vocab.N_SPECIAL + 16
        pairs = _pairs_of(body, 3, 3)
        assert len(pairs) >= 3
        triggers = [t for t in pairs if t not in set(pairs.values())]
        # a trigger is never filler and never an answer: it occurs exactly 3 times, always paired
        assert all(np.sum(body == t) == 3 for t in triggers)
        answers_seen |= set(pairs.values())
    assert len(answers_seen) > 8  # answers are fresh per example, not a fixed mapping


def test_scored_targets_on_a_literal_example():
    """Body: trigger 20 -> answer 30 at 0, 5, 10; trigger 21 -> answer 31 at 3, 7, 12
    (occurrences=3, pairs=2), filler 40 and 41. First answers at 1 and 4, later ones at 6, 11 and
    8, 13. 30 also occurs 3 times but is followed by 40, 21, 21 (no pair); 31's last is the end."""
    task = make_task("induction", n_symbols=64, tokens="symbols", layout="pairs", pairs=2, occurrences=3, filler=2)
    body = np.array([20, 30, 40, 21, 31, 20, 30, 21, 31, 41, 20, 30, 21, 31])
    ex = Example(np.zeros(0, np.int32), np.append(body, vocab.EOS))
    first, repeat = task.scored_targets(ex)
    assert first.tolist() == [1, 4]
    assert repeat.tolist() == [6, 8, 11, 13]
    seg = make_task("induction", length=4, n_symbols=26)
    x = seg.example("train", 0, 0)
    f, r = seg.scored_targets(x)
    assert f.tolist() == [1, 2, 3] and r.tolist() == [5, 6, 7]


def test_pairs_layout_is_deterministic_and_splits_are_disjoint():
    task = make_task("induction", **PAIRS)
    a = [task.example("train", 3, i) for i in range(5)]
    b = [make_task("induction", **PAIRS).example("train", 3, i) for i in range(5)]
    assert a == b
    assert a != [task.example("train", 4, i) for i in range(5)]
    for split in ("train", "validation"):
        for ex in task.examples(split, seed=0, limit=20):
            assert hashed_split("induction", ex.targets.tobytes()) == split


def test_pairs_layout_bad_params_raise_one_line_errors():
    for kw, key in ((dict(layout="grid"), "layout"), (dict(pairs=0), "pairs"), (dict(occurrences=1), "occurrences"),
                    (dict(pairs=15), "pairs"), (dict(prompt="first"), "layout"), (dict(pairs=True), "pairs")):
        with pytest.raises(ValueError, match=f"induction: parameter '{key}'") as err:
            make_task("induction", **{**PAIRS, **kw})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["decoder", "prefix_lm", "encdec"])
def test_probe_masks_on_the_pairs_layout_mark_trigger_inputs(arch):
    """The analysis' repeat mask sits on the inputs that are a trigger's 2nd/3rd occurrence (their
    target is the answer, which equals the token after the trigger's first occurrence), in each
    generating architecture's layout (encdec: the decoder side, BOS then the targets, no SEP)."""
    from archcmp.analysis.induction.cli import probe_set
    from archcmp.analysis.rank.cli import TaskCache

    params = dict(PAIRS)
    run = SimpleNamespace(config={"task": {"name": "induction", "params": params, "seq_len": 31}}, arch=arch)
    batch, first, repeat, _, _ = probe_set(run, TaskCache(), 12)
    inputs, targets = batch["inputs"], batch["targets"]
    assert (inputs[:, 0] == vocab.BOS).all() and ((inputs[:, 1] == vocab.SEP) == (arch != "encdec")).all()
    for i in range(12):
        f, r = np.flatnonzero(first[i]), np.flatnonzero(repeat[i])
        assert len(f) >= 3 and len(r) >= 6
        for q in r:  # an earlier occurrence of the trigger, followed by the same answer
            earlier = [k for k in range(q) if inputs[i, k] == inputs[i, q]]
            assert earlier and all(targets[i, k] == targets[i, q] for k in earlier)
        for q in f:
            assert not any(inputs[i, k] == inputs[i, q] for k in range(q))


def test_prefix_lm_on_the_pairs_layout_is_the_decoder_up_to_a_constant_bos_state():
    """With no prompt the prefix LM's bidirectional prefix is ``BOS SEP``: its mask adds one entry
    to the decoder's, BOS looking at SEP, two fixed tokens at fixed positions. So with the same
    weights a one-layer model gives every later position exactly the decoder's logits, and BOS one
    vector that is the same in every row (not the decoder's). Stacking layers, the prefix LM is the
    decoder with a different constant at position 0: the same information reaches every body token."""
    import jax
    from flax import nnx

    from archcmp.analysis.induction.cli import probe_set
    from archcmp.analysis.rank.cli import TaskCache
    from archcmp.model import masks
    from archcmp.model.config import ModelConfig
    from archcmp.model.models import build_model

    def batch_of(arch):
        run = SimpleNamespace(config={"task": {"name": "induction", "params": dict(PAIRS), "seq_len": 31}}, arch=arch)
        return probe_set(run, TaskCache(), 6)[0]

    dec, pre = batch_of("decoder"), batch_of("prefix_lm")
    for key in ("inputs", "targets", "segment_ids", "positions"):
        assert np.array_equal(dec[key], pre[key]), key
    real = dec["segment_ids"] > 0
    assert np.array_equal(pre["prefix_mask"], real & (np.arange(31)[None] < 2))  # BOS SEP only

    m_dec = np.asarray(masks.self_attention_mask("decoder", dec["segment_ids"], dec["positions"]))
    m_pre = np.asarray(masks.self_attention_mask("prefix_lm", pre["segment_ids"], pre["positions"],
                                                 pre["prefix_mask"]))
    assert not (m_dec & ~m_pre).any()
    assert np.argwhere(m_pre & ~m_dec).tolist() == [[b, 0, 0, 1] for b in range(6)]

    def logits(arch, batch):
        cfg = ModelConfig(arch=arch, vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=31,
                          mlp=False, pos_encoding="learned", init_std=0.125, scan_layers=False)
        model = build_model(cfg, 3)
        return nnx.state(model, nnx.Param), np.asarray(model(batch))

    p_dec, l_dec = logits("decoder", {k: dec[k] for k in ("inputs", "segment_ids", "positions")})
    p_pre, l_pre = logits("prefix_lm", {k: pre[k] for k in ("inputs", "segment_ids", "positions", "prefix_mask")})
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_dec), jax.tree.leaves(p_pre)))
    np.testing.assert_array_equal(l_pre[:, 1:], l_dec[:, 1:])  # every position after BOS: the decoder's
    assert np.abs(l_pre[:, 0] - l_dec[:, 0]).max() > 1e-3  # BOS: another state than the decoder's ...
    np.testing.assert_allclose(l_pre[:, 0], np.broadcast_to(l_pre[:1, 0], l_pre[:, 0].shape), rtol=0, atol=1e-6)
