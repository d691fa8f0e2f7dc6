"""The induction probe of the encoder (issue 17): ``arch.mlm_rate``, the masked-answer probe batch,
the bidirectional prefix-matching score and the analysis' mask-filling branch."""
from types import SimpleNamespace

import numpy as np
import pytest

from archcmp.analysis.induction.cli import (bidirectional_matching_scores, masked_answer_probe,
                                            prefix_matching_scores)
from archcmp.data import vocab
from archcmp.data.tasks import make_task
from hydra_cfg import TINY, compose_cfg

PAIRS = dict(n_symbols=16, tokens="symbols", layout="pairs", pairs=3, occurrences=3, filler=10)
MLM = ["experiment=induction", *(o for o in TINY if not o.startswith("task.seq_len")), "arch=encoder", "arch.objective=mlm", "train.num_seeds=1",
       "task.seq_len=31", *(f"task.params.{k}={v}" for k, v in PAIRS.items())]


# ----------------------------------------------------------------------------- arch.mlm_rate
@pytest.fixture(scope="module")
def mlm_cfg():
    """The resolved config of a small encoder MLM run on layout=pairs (composed once)."""
    from omegaconf import OmegaConf

    res = OmegaConf.to_container(compose_cfg(MLM), resolve=True)
    res.pop("hydra", None)
    return res


def _with(cfg, **arch):
    return {**cfg, "arch": {**cfg["arch"], **arch}}


def test_mlm_rate_reaches_the_formatter_and_the_identity_only_when_not_the_default(mlm_cfg):
    from archcmp.training.identity import digest, identity_of
    from archcmp.training.plan import plan_run
    from archcmp.training.settings import parse

    assert mlm_cfg["arch"]["mlm_rate"] == 0.15
    # a run made before the key existed had no arch.mlm_rate: its identity (and hash) is unchanged
    before = {**mlm_cfg, "arch": {k: v for k, v in mlm_cfg["arch"].items() if k != "mlm_rate"}}
    assert digest(identity_of(mlm_cfg)) == digest(identity_of(before))
    higher = _with(mlm_cfg, mlm_rate=0.4)
    assert identity_of(higher)["arch"]["mlm_rate"] == 0.4
    assert digest(identity_of(higher)) != digest(identity_of(mlm_cfg))

    settings, shape = parse(higher)
    assert settings.mlm_rate == 0.4 and parse(mlm_cfg)[0].mlm_rate == 0.15
    plan = plan_run(settings, shape, [0])
    assert plan.formatter.mlm_rate == 0.4
    batch = next(iter(plan.train_stream(0)))
    # every example (one per row here: 28 body tokens + EOS + BOS SEP = 31 = seq_len) has 29
    # candidate tokens (BOS and SEP are never chosen): round(0.4 * 29) = 12 are chosen
    per_row = batch["weights"].sum(axis=1)
    assert (per_row == 12).all(), per_row


def test_mlm_rate_outside_the_open_unit_interval_is_one_line_naming_key_and_value(mlm_cfg):
    from archcmp.model.config import ConfigError
    from archcmp.training.settings import parse

    for bad in (0, 1, 1.5, -0.1, "x", True):
        with pytest.raises(ConfigError, match=r"^arch\.mlm_rate=") as err:
            parse(_with(mlm_cfg, mlm_rate=bad))
        assert "\n" not in str(err.value) and "(0, 1)" in str(err.value), bad


def test_mlm_rate_other_than_the_default_needs_the_mlm_objective(mlm_cfg):
    from archcmp.model.config import ConfigError
    from archcmp.training.settings import parse

    with pytest.raises(ConfigError, match=r"^arch\.mlm_rate=0\.3: applies to arch\.objective=mlm only"):
        parse(_with(mlm_cfg, objective="task", mlm_rate=0.3))
    assert parse(_with(mlm_cfg, objective="task"))[0].mlm_rate == 0.15


def test_formatter_refuses_a_rate_outside_the_open_unit_interval():
    from archcmp.data.formatters import make_formatter

    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"mlm_rate must be in \(0, 1\)"):
            make_formatter("encoder", 32, objective="mlm", vocab_size=64, mlm_rate=bad)


# ----------------------------------------------------------------------------- the probe batch
def _probe(n=24, seed=0):
    task = make_task("induction", **PAIRS)
    exs = list(task.examples("validation", seed=0, limit=n))
    return exs, masked_answer_probe(task, exs, 31, seed=seed)


def test_masked_answer_probe_masks_one_answer_of_some_pairs_and_every_answer_of_the_others():
    exs, (batch, first, repeat) = _probe()
    inputs, targets = batch["inputs"], batch["targets"]
    sides = set()
    for i, ex in enumerate(exs):
        row = np.concatenate([[vocab.BOS, vocab.SEP], ex.targets])
        slots = first[i] | repeat[i]
        # nothing but the slots changes, and each slot becomes MASK with its own token as target
        assert np.array_equal(inputs[i, :row.size][~slots[:row.size]], row[~slots[:row.size]])
        assert (inputs[i, slots] == vocab.MASK).all() and np.array_equal(targets[i, slots], row[slots[:row.size]])
        assert (targets[i, ~slots] == 0).all() and (batch["segment_ids"][i, :row.size] == 1).all()
        assert repeat[i].sum() == 2 and first[i].sum() == 3  # 3 pairs: 2 with one answer masked, 1 with all 3

        def copies(p):  # the other places whose previous token is p's trigger
            return [k for k in range(1, row.size) if k != p and inputs[i, k - 1] == inputs[i, p - 1]]

        for p in np.flatnonzero(repeat[i]):
            assert inputs[i, p - 1] != vocab.MASK
            ks = copies(p)
            assert len(ks) == 2 and all(inputs[i, k] == targets[i, p] for k in ks)  # visible, the same answer
            sides.add((min(ks) < p, max(ks) > p))
        for p in np.flatnonzero(first[i]):
            assert all(inputs[i, k] == vocab.MASK for k in copies(p))  # nothing to copy
    # the masked occurrence varies: visible copies only later, on both sides, and only earlier
    assert sides == {(False, True), (True, True), (True, False)}
    again = _probe()[1]
    assert all(np.array_equal(a, b) for a, b in zip((again[0]["inputs"], again[1], again[2]), (inputs, first, repeat)))


def test_masked_answer_probe_refuses_the_segment_layout():
    task = make_task("induction", length=4, n_symbols=26)
    with pytest.raises(ValueError, match="layout=pairs"):
        masked_answer_probe(task, [task.example("validation", 0, 0)], 16)


# ----------------------------------------------------------------------------- the head score
def test_bidirectional_matching_on_literal_attention():
    """Row: BOS SEP 20 30 40 20 MASK 41 20 30 42 EOS -- trigger 20 at 2, 5, 8; its answer 30 at 3
    and 9, masked at 6. The query is slot 6; its targets are keys 3 (earlier) and 9 (later)."""
    tokens = np.array([[vocab.BOS, vocab.SEP, 20, 30, 40, 20, vocab.MASK, 41, 20, 30, 42, vocab.EOS]])
    T = tokens.shape[1]
    queries = np.zeros((1, T), bool)
    queries[0, 6] = True

    def head(weights):  # every row uniform, row 6 as given
        a = np.full((T, T), 1 / T)
        a[6] = 0
        for k, w in weights.items():
            a[6, k] = w
        return a

    heads = [head({3: 0.5, 9: 0.5}),   # both other answers
             head({9: 1.0}),           # the later one only: a causal head could not
             head({3: 1.0}),           # the earlier one only
             head({5: 1.0}),           # its own trigger
             head({2: 0.5, 8: 0.5}),   # the other occurrences' triggers
             np.full((T, T), 1 / T)]   # uniform
    attn = np.stack(heads)[None]
    score = bidirectional_matching_scores(attn, tokens, np.ones((1, T), bool), queries)
    np.testing.assert_allclose(score, [1, 1, 1, 0, 0, 2 / T])
    # the decoder's score has no target here: the slot holds MASK, not a token seen before
    assert (prefix_matching_scores(attn, tokens, np.ones((1, T), bool), queries) == 0).all()
    # padding keys are no targets: with key 9 invalid, the later-only head scores 0
    valid = np.ones((1, T), bool)
    valid[0, 9] = False
    assert bidirectional_matching_scores(attn, tokens, valid, queries)[1] == 0


def test_bidirectional_matching_on_the_probe_batch():
    """On real probe rows: a head reading, from each repeat slot, the visible copies of its answer
    scores 1; one reading the slot's trigger scores 0; a uniform head #copies / #keys."""
    _, (batch, first, repeat) = _probe(12)
    inputs, valid = batch["inputs"], batch["segment_ids"] > 0
    B, T = inputs.shape
    copy, trig, unif = np.zeros((3, B, T, T))
    expect = []
    for i in range(B):
        n = valid[i].sum()
        unif[i, :, :n] = 1 / n
        copy[i], trig[i] = unif[i], unif[i]
        for p in np.flatnonzero(repeat[i]):
            ks = [k for k in range(1, n) if k != p and inputs[i, k - 1] == inputs[i, p - 1]]
            copy[i, p] = 0
            copy[i, p, ks] = 1 / len(ks)
            trig[i, p] = 0
            trig[i, p, p - 1] = 1
            expect.append(len(ks) / n)
    attn = np.stack([copy, trig, unif], axis=1)
    score = bidirectional_matching_scores(attn, inputs, valid, repeat)
    np.testing.assert_allclose(score, [1, 0, np.mean(expect)])
    assert score[2] < 0.1


# ----------------------------------------------------------------------------- the analysis
def test_analysis_reads_an_encoder_on_masked_answers(tmp_path):
    """An untrained two-layer encoder, scored by analyze_run at step 0: the mask-filling branch
    runs (the encoder is no longer refused), every head gets a score, and an untrained model
    neither copies (bidirectional score near uniform) nor tells repeat slots from first ones."""
    from archcmp.analysis.induction.cli import analyze_run
    from archcmp.analysis.rank.cli import TaskCache
    from archcmp.model.config import ModelConfig

    cfg = ModelConfig(arch="encoder", vocab_size=vocab.N_SPECIAL + 16, d_model=16, n_heads=2, d_ff=32, n_layers=2,
                      max_len=31, mlp=False, pos_encoding="learned", init_std=0.125, scan_layers=False)
    run = SimpleNamespace(config={"task": {"name": "induction", "params": dict(PAIRS), "seq_len": 31}},
                          arch="encoder", run_dir=tmp_path, name="enc", summary={"seed": 0}, model_cfg=cfg)
    per_step, heads = analyze_run(run, TaskCache(), examples=16)
    assert [r["step"] for r in per_step] == [0] and len(heads) == 2 * 2
    r = per_step[0]
    assert abs(r["repeat_loss"] - r["first_loss"]) < 0.5 and r["repeat_loss"] > 2
    assert all(0 <= h["prefix_matching"] < 0.2 for h in heads)
