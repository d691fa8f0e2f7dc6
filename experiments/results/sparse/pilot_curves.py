"""Held-out recall accuracy vs step of the session-20 pilots (dense decoder, one seed each).

    python experiments/results/sparse/pilot_curves.py /work/runs/s20-sparse experiments/results/sparse

Reads the eval rows of every ``metrics.jsonl`` under the pilot run folders named in ``PILOTS``
(pilot name -> folder under the run root) and writes ``pilots_s20.csv`` (pilot, step,
eval_exact_match, eval_loss) and ``pilots_s20.png`` (exact match vs step, one line per pilot, with
the guessing level of each length and the 0.8 learning check drawn in).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

PILOTS = {"10 (extended)": "pilot10ext", "11": "pilot11", "12": "pilot12", "13": "pilot13", "14": "pilot14",
          "15": "pilot15"}
GUESS = {"4 shots": 0.49, "8 shots": 0.41}   # most frequent value shown (README, "Pilots")
LEARNED = 0.8


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for name, folder in PILOTS.items():
        for f in sorted((root / folder).rglob("metrics.jsonl")):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                if "eval_exact_match" in rec:
                    rows.append({"pilot": name, "step": rec["step"], "eval_exact_match": rec["eval_exact_match"],
                                 "eval_loss": rec["eval_loss"]})
    return pd.DataFrame(rows).drop_duplicates(["pilot", "step"], keep="last")


def plot(df: pd.DataFrame, path: Path) -> None:
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    for i, (name, d) in enumerate(df.groupby("pilot", sort=False)):
        ax.plot(d["step"], d["eval_exact_match"], "o-", ms=3, lw=1, color=f"C{i}", label=f"pilot {name}")
    for j, (cond, level) in enumerate(GUESS.items()):
        ax.axhline(level, color="grey", ls=":" if j else "--", lw=0.8, label=f"guessing level, {cond}")
    ax.axhline(LEARNED, color="k", lw=0.8, label="learning check (0.8)")
    ax.set_xlabel("step")
    ax.set_ylabel("recall accuracy (held-out exact match)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("sparse (C17), session-20 pilots: dense decoder, seed 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1])
        return 2
    root, out = Path(argv[0]), Path(argv[1])
    df = collect(root)
    df.to_csv(out / "pilots_s20.csv", index=False, float_format="%.6g", lineterminator="\n")
    plot(df, out / "pilots_s20.png")
    print(f"wrote {out / 'pilots_s20.csv'} and {out / 'pilots_s20.png'} ({len(df)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
