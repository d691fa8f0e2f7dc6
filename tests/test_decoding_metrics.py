"""Diversity / repetition metrics on hand-computed strings, and the decoding sweep end to end."""
import math

import numpy as np
import pandas as pd
import pytest

from archcmp.analysis.decoding.metrics import (distinct_n, pareto_front, rep_n, sample_entropy, self_overlap,
                                               strip)


def s(text):  # characters as tokens
    return tuple(ord(c) for c in text)


def test_distinct_n_hand_computed():
    # "abab": bigrams ab, ba, ab -> 2 distinct of 3; "abc": ab, bc -> together {ab, ba, bc} of 5
    assert distinct_n([s("abab")], 2) == pytest.approx(2 / 3)
    assert distinct_n([s("abab"), s("abc")], 2) == pytest.approx(3 / 5)
    # unigrams of "aaaa" + "ab": a a a a a b -> {a, b} of 6
    assert distinct_n([s("aaaa"), s("ab")], 1) == pytest.approx(2 / 6)
    assert math.isnan(distinct_n([s("a")], 2))


def test_rep_n_hand_computed():
    # "the cat the cat" as words: 2-grams (the cat) (cat the) (the cat) -> 1 repeat of 3
    words = {"the": 1, "cat": 2}
    seq = [words[w] for w in "the cat the cat".split()]
    assert rep_n(seq, 2) == pytest.approx(1 / 3)
    assert rep_n(s("abcdef"), 2) == 0.0
    # "aaaaa": 4 bigrams, all "aa" -> 3 of 4 repeat
    assert rep_n(s("aaaaa"), 2) == pytest.approx(3 / 4)
    assert rep_n(s("abcabcabc"), 3) == pytest.approx(1 - 3 / 7)  # 7 trigrams, 3 distinct


def test_sample_entropy_and_self_overlap():
    assert sample_entropy([s("ab")] * 4) == 0.0
    assert sample_entropy([s("a"), s("b"), s("c"), s("d")]) == pytest.approx(math.log(4))
    assert sample_entropy([s("a"), s("a"), s("b"), s("b")]) == pytest.approx(math.log(2))
    # "abc" {ab, bc} vs "abd" {ab, bd}: each shares 1 of its 2 bigrams -> 0.5; copies -> 1; disjoint -> 0
    assert self_overlap([s("abc"), s("abd")], 2) == pytest.approx(0.5)
    assert self_overlap([s("abc"), s("abc")], 2) == 1.0
    assert self_overlap([s("abc"), s("xyz")], 2) == 0.0


def test_strip_and_pareto():
    EOS, PAD = 2, 0
    assert strip([5, 6, EOS, 7, PAD], EOS, PAD) == (5, 6)
    assert strip([PAD, 5, 6], EOS, PAD) == (5, 6)
    # (x, y): (1, 1) dominated by (2, 2); (3, 0) and (0, 3) and (2, 2) on the front
    assert pareto_front([1, 2, 3, 0], [1, 2, 0, 3]) == [3, 1, 2]


@pytest.mark.slow  # a tiny training and 12 compiled decoding loops
def test_decoding_cli_end_to_end(tmp_path):
    from omegaconf import OmegaConf

    from archcmp.analysis.decoding import cli as decoding
    from archcmp.analysis.cli import main
    from archcmp.training.trainer import train
    from hydra_cfg import TINY, compose_cfg

    cfg = compose_cfg(["arch=decoder", *TINY, "size=femto"])
    run_dir = tmp_path / "sweep" / "decoder"
    train(cfg, run_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    out = tmp_path / "out"
    assert main(["decoding", str(tmp_path / "sweep"), "--prompts", "3", "--samples", "4", "--max-new", "8",
                 "--out", str(out)]) == 0
    df = pd.read_csv(out / "per_run.csv")
    assert list(df["setting"]) == [name for name, _ in decoding.SWEEP]
    g = df.set_index("setting")
    # greedy draws one sample per prompt: the per-prompt entropy is exactly 0
    assert g.loc["greedy", "sample_entropy"] == 0.0 and g.loc["greedy", "samples"] == 1
    # T=1.5 over 4 samples of an almost untrained model: samples differ
    assert g.loc["sample_T1.5", "sample_entropy"] > 0.5
    # log-likelihood under the model: greedy picks the argmax token, so it is at least T=1.5's
    assert g.loc["greedy", "loglik"] > g.loc["sample_T1.5", "loglik"]
    assert np.isfinite(g["distinct_2"]).all() and (out / "frontier.png").stat().st_size > 1000
    seeds = pd.read_csv(out / "seeds.csv")
    row = seeds[(seeds["group"] == "decoder/greedy") & (seeds["metric"] == "sample_entropy")]
    assert list(row["condition"]) == ["femto"] and list(row["value"]) == [0.0]


def test_variant_and_group_labels_keep_runs_of_one_arch_apart():
    """Two data variants of the same arch, size and setting (claim C32's duplicated-data arm): the
    --group / --variant labels come from each run's config, seeds.csv carries them, and the summary
    averages each variant over its own seeds only."""
    from archcmp.analysis.decoding import cli as decoding

    rows, configs = [], {}
    for label, rep in (("dedup", 0.1), ("duplicated", 0.5)):
        for seed in range(3):
            run = f"decoder-femto-{label}-s{seed}"
            configs[run] = {"task": {"name": "shakespeare", "label": label}}
            rows.append({"run": run, "arch": "decoder", "size": "femto", "seed": seed, "setting": "greedy",
                         **{m: 0.0 for m in decoding.METRICS}, "rep_4": rep + 0.01 * seed})
    decoding.label_rows(rows, configs, variant="{task.label}", group="{task.label}")
    per_run = pd.DataFrame(rows)
    seeds = decoding.seed_table(per_run)
    rep = seeds[seeds["metric"] == "rep_4"].groupby("group")["value"].apply(list).to_dict()
    assert rep == {"dedup": pytest.approx([0.1, 0.11, 0.12]), "duplicated": pytest.approx([0.5, 0.51, 0.52])}
    assert set(seeds["condition"]) == {"femto"}
    summary = decoding.summarize(per_run).set_index("variant")
    assert summary.loc["dedup", "rep_4"] == pytest.approx(0.11) and summary.loc["duplicated", "n_seeds"] == 3
    # the default group is arch/setting
    decoding.label_rows(rows, configs, variant="", group="{arch}/{setting}")
    assert {r["group"] for r in rows} == {"decoder/greedy"} and {r["variant"] for r in rows} == {""}
    with pytest.raises(ValueError, match="no_such_key"):
        decoding.label_rows(rows, configs, variant="{no_such_key}", group="{arch}")
