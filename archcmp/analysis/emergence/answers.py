"""Emergence-style scoring of imported checkpoints on prompt -> answer items.

``archcmp-analyze emergence --pretrained DIR [--pretrained DIR ...] --items FILE [--out OUT]``

``FILE`` holds one item a line, ``prompt<TAB>answer``. Each model reads the prompt and is scored on
the answer's tokens with teacher forcing, giving the three metrics the emergence probe compares
for our own runs (:mod:`archcmp.analysis.emergence`):

* ``exact_match`` -- every answer token is the model's top choice given the prompt and the answer's
  earlier tokens; this is exactly what greedy decoding of the answer's length would reproduce (a
  greedy decoder follows the same prefix as long as each choice is right), so no decoding loop runs;
* ``token_accuracy`` -- the fraction of answer tokens that are the top choice;
* ``log_likelihood`` -- the sum over answer tokens of the log-probability of the target token
  (``mean_log_likelihood`` per token).

It applies to models that predict an answer given a prompt: a **decoder** (GPT-2, Llama: the prompt's
tokens, then the answer's, one sequence) and an **encoder-decoder** (T5: the prompt in the encoder,
the answer in the decoder after its start token). It does not apply to an **encoder** (BERT): a
masked language model fills masks inside a text whose length is given, it has no distribution over
what follows a prompt, so an answer's likelihood or a greedy continuation is not defined; the
command refuses it in one line.

Tokenisation: the prompt is encoded as the checkpoint's tokenizer does for a whole text (its
special tokens included, e.g. Llama's BOS, T5's EOS); the answer is encoded without special tokens
for a decoder (it continues the prompt) and with them for an encoder-decoder (T5's target ends in
EOS, which is scored too). The answer is tokenised on its own, so a leading space belongs in the
answer text when the tokenizer marks word starts (GPT-2: ``"2 + 2 =\\t 4"``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from archcmp.model.archs import arch_spec

METRICS = ("exact_match", "token_accuracy", "log_likelihood", "mean_log_likelihood")


def read_items(path: Path) -> list[tuple[str, str]]:
    """``prompt<TAB>answer`` lines (blank lines skipped); a bad line raises ValueError naming it."""
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        if line.count("\t") != 1:
            raise ValueError(f"{path}:{n}: expected 'prompt<TAB>answer', got {line[:60]!r}")
        prompt, answer = line.split("\t")
        if not prompt or not answer:
            raise ValueError(f"{path}:{n}: the prompt and the answer must both be non-empty")
        items.append((prompt, answer))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def _answer_ids(loaded: Any, answer: str) -> np.ndarray:
    if arch_spec(loaded.arch).encoder_stack or loaded.tokenizer is None or not hasattr(loaded.tokenizer, "encode"):
        return np.asarray(loaded.encode(answer), np.int32)
    return np.asarray(loaded.tokenizer.encode(answer, add_special_tokens=False).ids, np.int32)


def item_batch(loaded: Any, prompt_ids: Sequence[np.ndarray], answer_ids: Sequence[np.ndarray]) -> dict:
    """A model batch scoring each answer after its prompt (one item a row; segment 0 = padding)."""
    from archcmp.loading.loaded import text_batch

    if arch_spec(loaded.arch).encoder_stack:
        enc = text_batch(list(prompt_ids), "decoder")
        start = int(loaded.info.get("decoder_start_id", 0))
        dec = text_batch([np.concatenate([[start], a[:-1]]).astype(np.int32) for a in answer_ids], "decoder")
        return {"enc_inputs": enc["inputs"], "enc_segment_ids": enc["segment_ids"],
                "enc_positions": enc["positions"], **dec}
    return text_batch([np.concatenate([p, a]).astype(np.int32) for p, a in zip(prompt_ids, answer_ids)],
                      loaded.arch)


def answer_log_probs(loaded: Any, items: Sequence[tuple[str, str]], batch_size: int = 16) -> list[tuple]:
    """Per item: (answer token ids, log-softmax rows predicting them [n_answer, V])."""
    from archcmp.analysis.common.introspect import logits

    if arch_spec(loaded.arch).mask_fill:
        raise ValueError(f"{loaded.source}: an encoder ({loaded.info.get('model_type', 'encoder')}) has no "
                         "distribution over what follows a prompt (it fills masks in a text of given length); "
                         "answer scoring applies to decoders and encoder-decoders")
    if not loaded.info.get("has_lm_head", True):
        raise ValueError(f"{loaded.source}: the checkpoint has no vocabulary head (a base model without "
                         "language-model weights) and cannot score answers")
    out = []
    for lo in range(0, len(items), batch_size):
        chunk = items[lo:lo + batch_size]
        prompts = [np.asarray(loaded.encode(p), np.int32) for p, _ in chunk]
        answers = [_answer_ids(loaded, a) for _, a in chunk]
        for (p, a), ids in zip(chunk, answers):
            if len(ids) == 0:
                raise ValueError(f"answer {a!r} of prompt {p!r} has no tokens")
        rows = logits(loaded, item_batch(loaded, prompts, answers))  # per item [n, V], decoder side
        for p, a, z in zip(prompts, answers, rows):
            # decoder: position t predicts token t+1, so the answer's tokens come from the rows just
            # before them; encdec: decoder row j predicts answer token j.
            z = z[len(p) - 1:len(p) - 1 + len(a)] if not arch_spec(loaded.arch).encoder_stack else z[:len(a)]
            z = z.astype(np.float64)
            logp = z - z.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            out.append((a, logp))
    return out


def score_items(loaded: Any, items: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """One row per item: answer_tokens, exact_match, token_accuracy, log_likelihood, mean_log_likelihood."""
    rows = []
    for (prompt, answer), (ids, logp) in zip(items, answer_log_probs(loaded, items)):
        correct = logp.argmax(-1) == ids
        ll = float(logp[np.arange(len(ids)), ids].sum())
        rows.append({"prompt": prompt, "answer": answer, "answer_tokens": len(ids),
                     "exact_match": float(correct.all()), "token_accuracy": float(correct.mean()),
                     "log_likelihood": ll, "mean_log_likelihood": ll / len(ids)})
    return pd.DataFrame(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archcmp-analyze emergence --pretrained",
                                description="Exact match, per-token accuracy and answer log-likelihood of "
                                            "imported checkpoints on prompt<TAB>answer items.")
    p.add_argument("--pretrained", action="append", type=Path, required=True, metavar="DIR",
                   help="checkpoint directory (config.json + *.safetensors + tokenizer.json); repeatable")
    p.add_argument("--items", type=Path, required=True, help="one 'prompt<TAB>answer' item a line")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <first DIR>/analysis/answers)")
    return p


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from archcmp.loading.pretrained import load_pretrained

    t0 = time.perf_counter()
    try:
        items = read_items(args.items)
        per_model = []
        for directory in args.pretrained:
            loaded = load_pretrained(directory)
            frame = score_items(loaded, items)
            frame.insert(0, "model", directory.name)
            per_model.append((loaded, frame))
    except (ValueError, FileNotFoundError) as err:
        print(f"emergence: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out or (args.pretrained[0] / "analysis" / "answers")
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.concat([f for _, f in per_model], ignore_index=True)
    scores.to_csv(out / "items.csv", index=False)
    summary = pd.DataFrame([{
        "model": loaded.source.name, "model_type": loaded.info.get("model_type"), "arch": loaded.arch,
        "items": len(frame), **{m: float(frame[m].mean()) for m in METRICS},
        "load_seconds": float(loaded.info.get("load_seconds", float("nan")))} for loaded, frame in per_model])
    summary.to_csv(out / "summary.csv", index=False)
    from archcmp.analysis.emergence.plots import markdown_table

    table = markdown_table(summary, index=False, floatfmt=".4f")
    (out / "summary.md").write_text(
        f"# Answer scoring of imported checkpoints\n\nItems: `{args.items}` ({len(items)}). Command:\n\n"
        f"```\narchcmp-analyze emergence {' '.join(argv)}\n```\n\n{table}\n\n"
        "exact_match: every answer token is the top choice (what greedy decoding would give); "
        "token_accuracy: fraction of answer tokens that are; log_likelihood: sum of the target tokens' "
        "log-probabilities (nats).\n")
    print(table)
    print(f"emergence: {len(per_model)} model(s), {len(items)} items; wrote {out}/summary.md, summary.csv, items.csv "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
