#!/usr/bin/env bash
# Emergence probe, end to end (seed claims C24, C25; issue 17; see seeds/README.md):
#   1. experiment=emergence: a ladder of decoders femto..tiny (7.5k-0.8M parameters) on 3-4 digit
#      addition (reversed answers, 4-6 tokens), 4000 steps each, three seeds per size, a checkpoint
#      every 500 steps (all kept); resumable (complete runs are skipped);
#   2. archcmp-analyze emergence over every run: greedy decoding of 512 fixed test examples, sharp
#      and smooth metrics of the same outputs, breakthroughness / linearity / p^L across sizes, at
#      the final step and (a second pass) at every kept checkpoint.
# Usage (from the repository root):   bash experiments/emergence.sh [extra Hydra overrides...]
#   e.g. a quick smoke version:       bash experiments/emergence.sh train.steps=20 hydra.sweeper.params.size=femto,pico
# Environment: ARCHCMP=<dir with the console scripts> (default: .venv/bin, else PATH),
#              EMERGENCE_SWEEP=<sweep dir> (default multirun/emergence),
#              EMERGENCE_OUT=<analysis output> (default experiments/results/emergence),
#              EMERGENCE_ANALYZE_ARGS (e.g. --wandb).
# Relaunching resumes: complete runs are skipped, interrupted ones continue from their checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ARCHCMP:-}"
if [[ -z "$BIN" && -x .venv/bin/archcmp-train ]]; then BIN=.venv/bin; fi
TRAIN="${BIN:+$BIN/}archcmp-train"
ANALYZE="${BIN:+$BIN/}archcmp-analyze"
SWEEP="${EMERGENCE_SWEEP:-multirun/emergence}"
OUT="${EMERGENCE_OUT:-experiments/results/emergence}"
start=$(date +%s)

"$TRAIN" experiment=emergence "hydra.sweep.dir=$SWEEP" "$@"
trained=$(date +%s)
echo "emergence.sh: training took $((trained - start)) s"

# shellcheck disable=SC2086
"$ANALYZE" emergence "$SWEEP" --out "$OUT" ${EMERGENCE_ANALYZE_ARGS:-}
# shellcheck disable=SC2086
"$ANALYZE" emergence "$SWEEP" --out "$OUT/steps" --steps all --examples 256 ${EMERGENCE_ANALYZE_ARGS:-}
echo "emergence.sh: analysis took $(($(date +%s) - trained)) s; total $(($(date +%s) - start)) s"
