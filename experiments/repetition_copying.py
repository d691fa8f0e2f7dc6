"""Diagnostic for experiments/results/repetition_data (claim C32 part 2; it decides nothing).

Do the decoders trained on duplicated data loop less under greedy decoding because they recite the
64 duplicated training windows? For each run, the greedy continuations of the analysis' prompts
(the first 16 validation windows, 48 new tokens, as ``archcmp-analyze decoding --settings greedy``)
are cut into character n-grams, and we report the share of those n-grams found in the duplicated
pool (the 64 fixed windows of ``task.params.dup_pool``, the same for both arms) and in the whole
training stream, plus rep-4 for reference.

    python experiments/repetition_copying.py /work/runs/s19-gen/repetition_data --n 12 \
        --out experiments/results/repetition_data/copying.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def ngrams(seq, n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--n", type=int, default=12, help="n-gram length in characters")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import jax

    from archcmp.analysis.decoding.metrics import rep_n, strip
    from archcmp.data import eval_examples, make_task, vocab
    from archcmp.decoding.generate import DecodeConfig, generate
    from archcmp.loading.run import load_run

    runs = sorted(d.parent for d in args.sweep.rglob("summary.json") if (d.parent / "checkpoints").is_dir())
    n = args.n
    # the duplicated pool is fixed by dup_pool and the train stream alone: build it from a dup_share=0.5 task
    pool_task = make_task("shakespeare", seq_len=62, dup_share=0.5, dup_pool=64)
    stream = pool_task.tokens["train"]
    pool = {g for s in pool_task.dup_starts for g in ngrams(stream[s:s + pool_task.seq_len].tolist(), n)}
    train = set(ngrams(stream.tolist(), n))
    rows = []
    for rd in runs:
        loaded = load_run(rd)
        info = loaded.info
        tcfg = info["config"]["task"]
        exs = eval_examples(info["task"], "validation", int(tcfg["seq_len"]), args.prompts, seed=0)
        toks = np.asarray(generate(loaded.model, [ex.inputs for ex in exs],
                                   DecodeConfig(strategy="greedy", max_new_tokens=args.max_new), jax.random.key(0)))
        gens = [list(strip(r, vocab.EOS, vocab.PAD)) for r in toks]
        grams = [g for s in gens for g in ngrams(s, n)]
        rows.append({"run": info["run"], "size": info["summary"].get("size"), "label": tcfg.get("label"),
                     "seed": int(info["summary"].get("seed", 0)),
                     f"share_{n}gram_in_dup_pool": float(np.mean([g in pool for g in grams])),
                     f"share_{n}gram_in_train": float(np.mean([g in train for g in grams])),
                     "distinct_12gram_share": len(set(grams)) / max(1, len(grams)),
                     "rep_4": float(np.mean([rep_n(s, 4) for s in gens if len(s) >= 4])),
                     "example": loaded.tokenizer.decode(gens[0])})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.4g")
    print(df.drop(columns=["example"]).groupby(["size", "label"]).mean(numeric_only=True).round(3).to_string())


if __name__ == "__main__":
    main()
