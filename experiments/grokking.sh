#!/usr/bin/env bash
# Grokking (seed claim C26; issue 17): experiment=grokking trains a one-layer decoder on a+b mod 31
# (one token per residue, 40% of the pairs, full batch) with weight decay 1.0 vs 0.0, three seeds
# each, 3000 steps, exact match on every training and held-out pair every 10 steps; then
# archcmp-analyze grokking judges the pre-set criterion and plots accuracy, loss and weight norm.
# Usage (from the repository root):   bash experiments/grokking.sh [extra Hydra overrides...]
# Environment: ARCHCMP=<dir with the console scripts> (default: .venv/bin, else PATH),
#              GROKKING_SWEEP (default multirun/grokking), GROKKING_OUT (default experiments/results/grokking).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ARCHCMP:-}"
if [[ -z "$BIN" && -x .venv/bin/archcmp-train ]]; then BIN=.venv/bin; fi
SWEEP="${GROKKING_SWEEP:-multirun/grokking}"
OUT="${GROKKING_OUT:-experiments/results/grokking}"
start=$(date +%s)
"${BIN:+$BIN/}archcmp-train" experiment=grokking "hydra.sweep.dir=$SWEEP" "$@"
echo "grokking.sh: training took $(($(date +%s) - start)) s"
"${BIN:+$BIN/}archcmp-analyze" grokking "$SWEEP" --out "$OUT"
