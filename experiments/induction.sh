#!/usr/bin/env bash
# Induction heads (seed claims C19, C20; issue 17): experiment=induction trains a two-layer
# attention-only decoder (three seeds, one process) on random segments followed by their repeat,
# keeping a checkpoint every 50 steps; archcmp-analyze induction then scores every checkpoint
# (first vs repeat loss, per-head prefix-matching / previous-token / copying scores) and judges the
# pre-set phase-change criterion.
# Usage (from the repository root):   bash experiments/induction.sh [extra Hydra overrides...]
# Environment: ARCHCMP=<dir with the console scripts> (default: .venv/bin, else PATH),
#              INDUCTION_SWEEP (default multirun/induction), INDUCTION_OUT (default experiments/results/induction).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ARCHCMP:-}"
if [[ -z "$BIN" && -x .venv/bin/archcmp-train ]]; then BIN=.venv/bin; fi
SWEEP="${INDUCTION_SWEEP:-multirun/induction}"
OUT="${INDUCTION_OUT:-experiments/results/induction}"
start=$(date +%s)
"${BIN:+$BIN/}archcmp-train" experiment=induction "hydra.sweep.dir=$SWEEP" "$@"
echo "induction.sh: training took $(($(date +%s) - start)) s"
"${BIN:+$BIN/}archcmp-analyze" induction "$SWEEP" --out "$OUT"
