"""``archcmp-analyze emergence --pretrained DIR --items FILE``: exact match, per-token accuracy and
answer log-likelihood of imported checkpoints. The expected numbers come from transformers' logits
stored in the golden files (tests/goldens/pretrained), not from archcmp: the items are the golden
inputs written back as text (the golden tokenizer is a word-level one, ``w0 w1 ...``)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archcmp.analysis.cli import main

GOLDENS = Path(__file__).parent / "goldens" / "pretrained"
TOKENIZER = GOLDENS / "gpt2" / "tokenizer.json"  # word-level over the 96 ids every golden uses


def _words(ids):
    vocab = {i: w for w, i in json.loads(TOKENIZER.read_text())["model"]["vocab"].items()}
    assert all(i >= 5 for i in ids)  # ordinary words only (no [PAD]/[CLS]/...)
    return " ".join(vocab[int(i)] for i in ids)


def _log_softmax(z):
    z = z.astype(np.float64) - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _expected(rows_logits, answers):
    """(exact_match, token_accuracy, log_likelihood) from transformers' logits rows predicting answers."""
    out = []
    for z, a in zip(rows_logits, answers):
        lp = _log_softmax(z)
        correct = lp.argmax(-1) == np.asarray(a)
        out.append((float(correct.all()), float(correct.mean()), float(lp[np.arange(len(a)), a].sum())))
    return out


def _with_tokenizer(family, tmp_path):
    d = tmp_path / family
    shutil.copytree(GOLDENS / family, d)
    if not (d / "tokenizer.json").exists():
        shutil.copy(TOKENIZER, d / "tokenizer.json")
    return d


def _score(dirs, items, tmp_path):
    path = tmp_path / "items.tsv"
    path.write_text("".join(f"{p}\t{a}\n" for p, a in items))
    out = tmp_path / "out"
    assert main(["emergence", *[x for d in dirs for x in ("--pretrained", str(d))], "--items", str(path),
                 "--out", str(out)]) == 0
    return pd.read_csv(out / "items.csv"), pd.read_csv(out / "summary.csv")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_answers_are_scored_as_transformers_logits_say(family, tmp_path):
    g = np.load(GOLDENS / family / "expected.npz")
    ids, n = g["input_ids"], g["attention_mask"].sum(1)
    split = 4  # prompt = the first 4 tokens, answer = the rest of the row
    items, rows, answers = [], [], []
    for b in range(len(ids)):
        real = ids[b, :n[b]]
        items.append((_words(real[:split]), _words(real[split:])))
        rows.append(g["logits"][b, split - 1:n[b] - 1])  # position t predicts token t+1
        answers.append(real[split:])
    got, summary = _score([_with_tokenizer(family, tmp_path)], items, tmp_path)
    for (_, row), (em, acc, ll) in zip(got.iterrows(), _expected(rows, answers)):
        assert row["exact_match"] == em and row["token_accuracy"] == pytest.approx(acc)
        assert row["log_likelihood"] == pytest.approx(ll, abs=1e-3)
    assert list(got["answer_tokens"]) == [len(a) for a in answers]
    assert summary["arch"].tolist() == ["decoder"]
    assert summary["log_likelihood"].iloc[0] == pytest.approx(np.mean(got["log_likelihood"]))


def test_encoder_decoder_answers_are_scored_after_the_start_token(tmp_path):
    g = np.load(GOLDENS / "t5" / "expected.npz")
    ids, n, dec = g["input_ids"], g["attention_mask"].sum(1), g["decoder_input_ids"]
    assert (dec[:, 0] == 0).all()  # transformers' decoder inputs start with the start token (id 0)
    items, rows, answers = [], [], []
    for b in range(len(ids)):
        answer = np.concatenate([dec[b, 1:], [7]])  # decoder input = [start] + answer[:-1]
        items.append((_words(ids[b, :n[b]]), _words(answer)))
        rows.append(g["logits"][b])  # decoder row j predicts answer token j
        answers.append(answer)
    got, summary = _score([_with_tokenizer("t5", tmp_path)], items, tmp_path)
    for (_, row), (em, acc, ll) in zip(got.iterrows(), _expected(rows, answers)):
        assert row["exact_match"] == em and row["token_accuracy"] == pytest.approx(acc)
        assert row["log_likelihood"] == pytest.approx(ll, abs=1e-3)
    assert summary["arch"].tolist() == ["encdec"]


def test_exact_match_is_one_when_the_answer_is_the_models_own_greedy_choice(tmp_path):
    """The answer built from transformers' argmax tokens is matched exactly (accuracy 1)."""
    g = np.load(GOLDENS / "gpt2" / "expected.npz")
    ids = g["input_ids"][0]
    greedy = g["logits"][0, 3]  # after the first 4 tokens
    first = int(np.argmax(greedy))
    if first < 5:
        pytest.fail("the golden model's greedy token is a special token; pick another position")
    got, _ = _score([_with_tokenizer("gpt2", tmp_path)], [(_words(ids[:4]), _words([first]))], tmp_path)
    assert got["exact_match"].tolist() == [1.0] and got["token_accuracy"].tolist() == [1.0]


def test_an_encoder_is_refused_in_one_line_saying_why(tmp_path, capsys):
    d = _with_tokenizer("bert", tmp_path)
    (tmp_path / "items.tsv").write_text("w5 w6\tw7\n")
    assert main(["emergence", "--pretrained", str(d), "--items", str(tmp_path / "items.tsv")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "an encoder (bert) has no distribution over what follows a prompt" in err[0]


def test_bad_items_file_is_named(tmp_path, capsys):
    (tmp_path / "items.tsv").write_text("no tab here\n")
    assert main(["emergence", "--pretrained", str(GOLDENS / "gpt2"), "--items", str(tmp_path / "items.tsv")]) == 2
    assert "items.tsv:1: expected 'prompt<TAB>answer'" in capsys.readouterr().err
