#!/usr/bin/env bash
# Grokking (seed claim C26; issue 6): experiment=grokking trains encoder, decoder, prefix_lm and
# encdec (size=nano, 2 layers) on a+b mod 97 with half of the pairs as training data, AdamW with
# weight decay 1.0 vs 0.0, 5000 steps, exact match on every training and held-out pair every 100
# steps; then archcmp-analyze grokking plots train/validation accuracy vs step.
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
"${BIN:+$BIN/}archcmp-train" experiment=grokking launcher=joblib "hydra.sweep.dir=$SWEEP" "$@"
echo "grokking.sh: training took $(($(date +%s) - start)) s"
"${BIN:+$BIN/}archcmp-analyze" grokking "$SWEEP" --out "$OUT"
