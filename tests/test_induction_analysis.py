"""Induction-head scores on constructed attention patterns and OV circuits, and the phase-change
window of a constructed loss curve."""
import numpy as np
import pandas as pd
import pytest

from archcmp.analysis.induction.cli import (copying_scores, criterion, drop_window, phase_change,
                                        prefix_matching_scores, previous_token_scores)


def _repeat_sequence(L=6):
    """BOS, L distinct tokens, SEP, the same L tokens: [1, 10..10+L-1, 4, 10..10+L-1]."""
    seg = np.arange(10, 10 + L)
    return np.concatenate([[1], seg, [4], seg])[None]


def _causal_uniform(T):
    a = np.tril(np.ones((T, T)))
    return a / a.sum(-1, keepdims=True)


def test_perfect_induction_head_scores_one_and_uniform_head_scores_little():
    tokens = _repeat_sequence(6)
    T = tokens.shape[1]
    valid = np.ones_like(tokens, bool)
    perfect = _causal_uniform(T).copy()
    L = 6
    for i in range(L):  # repeat token x_i at position L+2+i attends to x_{i+1}'s position 2+i
        q = L + 2 + i
        perfect[q] = 0
        perfect[q, 2 + i] = 1.0
    uniform = _causal_uniform(T)
    attn = np.stack([perfect, uniform])[None]  # [B=1, H=2, T, T]
    pm = prefix_matching_scores(attn, tokens, valid)
    assert pm[0] == 1.0
    # uniform: one target among q+1 visible keys, for queries q = 8..13 -> mean of 1/(q+1)
    np.testing.assert_allclose(pm[1], np.mean([1 / (q + 1) for q in range(8, 14)]))
    assert pm[1] < 0.15


def test_previous_token_head():
    T = 7
    shift = np.eye(T, k=-1)
    shift[0, 0] = 1
    attn = np.stack([shift, _causal_uniform(T)])[None]
    pt = previous_token_scores(attn, np.ones((1, T), bool))
    assert pt[0] == 1.0 and pt[1] < 0.5


def test_copying_score_identity_one_random_near_zero():
    rng = np.random.default_rng(0)
    ov = np.stack([3 * np.eye(20), -np.eye(20), rng.normal(size=(20, 20))])
    c = copying_scores(ov)
    assert c[0] == 1.0 and c[1] == 0.0 and abs(c[2] - 0.5) < 0.25  # random: eigenvalues symmetric about 0
    # a random matrix's positive share sits near one half; the score's informative end is 1
    assert c[2] < 0.8


def test_drop_window_and_criterion_on_constructed_curves():
    steps = np.arange(0, 2001, 50)
    sharp = 3.2 - 3.1 / (1 + np.exp(-(steps - 1000) / 30))  # drop centred at step 1000
    w = drop_window(steps, sharp)
    assert 900 <= w["t10"] <= 1000 <= w["t90"] <= 1100 and w["window"] <= 200
    per_step = pd.DataFrame({"run": "r", "arch": "decoder", "seed": 0, "n_symbols": 26, "step": steps,
                             "repeat_loss": sharp, "first_loss": 3.26})
    pm = 0.9 / (1 + np.exp(-(steps - 1000) / 30))
    heads = pd.DataFrame({"run": "r", "step": steps, "layer": 2, "head": 0, "prefix_matching": pm})
    phase = phase_change(per_step, heads, 0.5)
    assert phase["pm_step"].iloc[0] in (1000.0, 1050.0)
    assert criterion(phase)["met"]
    # a circuit keyed further back: only the strided score rises; the stride-1 criterion fails
    # and the strided one holds
    strided = heads.assign(prefix_matching=0.05, strided_matching=pm)
    verdict = criterion(phase_change(per_step, strided, 0.5))
    assert not verdict["met"] and verdict["met_strided"]
    # a slow, smooth decline is no phase change
    slow = 3.2 - 3.1 * steps / 2000
    phase_slow = phase_change(per_step.assign(repeat_loss=slow), heads, 0.5)
    assert not criterion(phase_slow)["met"]


def test_prefix_matching_on_the_task_layout_scores_the_repeat_with_the_right_offset():
    """On real ``task=induction`` sequences (decoder layout BOS SEP x x, 64 symbols), a head that
    attends from each repeated token to the position after its first occurrence scores 1; one
    that attends to the first occurrence itself (off by one) scores ~0; and chance repeats inside
    the first occurrence are left out when the queries are restricted to the repeat."""
    from archcmp.data import vocab
    from archcmp.data.tasks import make_task

    task = make_task("induction", length=[10, 20], n_symbols=64, tokens="symbols")
    exs = list(task.examples("validation", seed=0, limit=8))
    T = 2 * 20 + 3
    tokens = np.zeros((len(exs), T), int)
    repeat = np.zeros_like(tokens, bool)
    right, off_by_one = np.zeros((2, len(exs), T, T))
    for i, ex in enumerate(exs):
        n = (len(ex.targets) - 1) // 2
        seq = np.concatenate([[vocab.BOS, vocab.SEP], ex.targets[:-1]])  # the decoder's inputs
        tokens[i, :len(seq)] = seq
        assert np.array_equal(seq[2:2 + n], seq[2 + n:])
        repeat[i, n + 2:2 * n + 1] = True  # repeated x_1..x_{n-1}, as in the analysis' loss mask
        for q in range(T):
            right[i, q, 0] = off_by_one[i, q, 0] = 1.0  # default: attend to BOS
        for j in range(n - 1):
            q = n + 2 + j  # repeat token x_{j+1}; its first occurrence sits at 2 + j
            right[i, q] = 0
            right[i, q, 3 + j] = 1.0  # the token after it: x_{j+2}, the one to copy
            off_by_one[i, q] = 0
            off_by_one[i, q, 2 + j] = 1.0
    valid = tokens > 0
    attn = np.stack([right, off_by_one], axis=1)  # [B, H=2, T, T]
    pm = prefix_matching_scores(attn, tokens, valid, queries=repeat)
    assert pm[0] == 1.0
    assert pm[1] < 0.05  # only where a symbol repeats by chance inside the segment


def test_strided_matching_and_lookback_pick_out_a_longer_look_back():
    """A head keyed three positions back (it attends from repeat token x_i to x_{i+3}'s first
    position, where tokens[k-3] == x_i) scores 1 at stride 3 and ~0 at stride 1; a fixed offset-3
    head scores 1 on previous_token_scores(offset=3) and ~0 at offset 1."""
    L = 8
    tokens = _repeat_sequence(L)  # BOS x(1..8) SEP x(10..17), distinct symbols
    T = tokens.shape[1]
    valid = np.ones_like(tokens, bool)
    strided = _causal_uniform(T).copy()
    queries = np.zeros_like(valid)
    for i in range(L - 3):  # repeat token x_i at L+2+i; x_i's first copy at 1+i, three on: 4+i
        q = L + 2 + i
        strided[q] = 0
        strided[q, 4 + i] = 1.0
        queries[0, q] = True
    attn = strided[None, None]
    assert prefix_matching_scores(attn, tokens, valid, queries=queries, stride=3)[0] == 1.0
    assert prefix_matching_scores(attn, tokens, valid, queries=queries, stride=1)[0] == 0.0
    back3 = np.eye(T, k=-3)
    back3[:3, 0] = 1
    attn = back3[None, None]
    assert previous_token_scores(attn, valid, offset=3)[0] == 1.0
    # at offset 1 only query 1 (which has nothing three back and looks at BOS) counts: 1 of T-1
    np.testing.assert_allclose(previous_token_scores(attn, valid, offset=1)[0], 1 / (T - 1))


def test_probe_masks_follow_the_pair_through_the_filler():
    """With task.params.filler the pair sits at a random offset: the probe's first-occurrence and
    repeat masks must still cover x_1..x_{L-1} of each copy (the repeat's inputs equal the first's)."""
    from types import SimpleNamespace

    from archcmp.analysis.induction.cli import probe_set
    from archcmp.analysis.rank.cli import TaskCache

    params = {"length": [3, 9], "n_symbols": 64, "tokens": "symbols", "filler": 12}
    run = SimpleNamespace(config={"task": {"name": "induction", "params": params, "seq_len": 33}}, arch="decoder")
    batch, first, repeat, _, task = probe_set(run, TaskCache(), 16)
    starts = set()
    for i in range(16):
        f, r = np.flatnonzero(first[i]), np.flatnonzero(repeat[i])
        n = len(f) + 1
        assert len(r) == n - 1 and 3 <= n <= 9 and r[0] == f[0] + n and np.all(np.diff(f) == 1)
        assert np.array_equal(batch["inputs"][i, f], batch["inputs"][i, r])
        # and the last token of each copy (the target of the last masked input) matches too
        assert batch["targets"][i, f[-1]] == batch["targets"][i, r[-1]]
        starts.add(int(f[0]))
    assert len(starts) > 3  # not one fixed place


OBJECTIVE = {"encoder": ["arch.objective=mlm", "arch.mlm_rate=0.3"]}  # the encoder is probed after MLM


@pytest.mark.slow  # trains a run, then scores each checkpoint
@pytest.mark.parametrize("arch", ["decoder", "encdec", "encoder"])
def test_induction_cli_end_to_end(tmp_path, arch):
    """A 4-step attention-only model on task=induction: the CLI loads every checkpoint (steps 0,
    2, 4) and writes its tables, figures and verdict (a 4-step model has no induction head).
    encdec: the decoder side's self-attention is scored (two layers here, as in the decoder).
    encoder: trained by MLM, read on the masked-answer probe with the bidirectional score."""
    import json

    from omegaconf import OmegaConf

    from archcmp.analysis.cli import main as analyze
    from archcmp.training.trainer import train
    from hydra_cfg import TINY, compose_cfg

    over = [o for o in TINY if not o.startswith("task.seq_len")]
    cfg = compose_cfg(["experiment=induction", *over, "train.num_seeds=1", "task.seq_len=28",
                       "task.params.tokens=symbols", "task.params.n_symbols=40", "task.params.pairs=3",
                       "task.params.occurrences=2", "task.params.filler=8",
                       "model.pos_encoding=relative", "hydra.mode=RUN", f"arch={arch}",
                       "size.shapes.encdec.n_enc_layers=1", "size.shapes.encdec.n_dec_layers=2",
                       *OBJECTIVE.get(arch, [])])
    run_dir = tmp_path / "runs" / "r0"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    train(cfg, run_dir)
    out = tmp_path / "out"
    assert analyze(["induction", str(tmp_path / "runs"), "--out", str(out), "--examples", "16"]) == 0
    per_step = pd.read_csv(out / "per_step.csv")
    assert list(per_step["step"]) == [0, 2, 4] and (per_step["n_symbols"] == 40).all()
    heads = pd.read_csv(out / "heads.csv")
    assert len(heads) == 3 * 2 * 4  # steps x layers x heads
    assert heads["prefix_matching"].between(0, 1).all()
    # the best stride's score is never below the stride-1 score it includes
    assert heads["stride"].between(1, 8).all() and (heads["strided_matching"] >= heads["prefix_matching"] - 1e-12).all()
    assert (heads["lookback_score"] >= heads["previous_token"] - 1e-12).all()
    verdict = json.loads((out / "criterion_measured.json").read_text())
    assert verdict["n_seeds"] == 1 and verdict["met"] is False
    for name in ("losses.png", "heads.png", "head_maps.png", "table.md", "phase.csv"):
        assert (out / name).stat().st_size > 0
