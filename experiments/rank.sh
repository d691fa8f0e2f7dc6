#!/usr/bin/env bash
# Attention-rank probe, end to end (seed claims C02, C12, C28; see seeds/claims.yaml):
#   1. experiment=rank: encoder, decoder, prefix_lm, encdec x nano, micro on identical Shakespeare
#      character windows (64 tokens), 300 steps, a checkpoint and an evaluation every 50 steps (all
#      kept), three seeds each (train.num_seeds=3, trained together in one vmapped process);
#   2. head-count ablation at fixed d_model=64 (parameter count unchanged): decoder and encoder at
#      size=micro with n_heads=1 (head_dim 64), next to the default n_heads=4 (head_dim 16) of step 1
#      (seed claim C28, part 1), three seeds;
#   3. archcmp-analyze rank over every run and every checkpoint (+ step 0 = initialisation).
# Usage (from the repository root):   bash experiments/rank.sh [extra Hydra overrides...]
#   e.g. a quick smoke version:       bash experiments/rank.sh train.steps=40 train.checkpoint_every=20 train.eval_every=20
# Environment: ARCHCMP=<dir with the console scripts> (default: .venv/bin, else PATH),
#              RANK_OUT=<analysis output> (default experiments/results/rank),
#              RANK_SWEEP=<sweep dir> (default multirun/rank), RANK_ANALYZE_ARGS (e.g. --wandb),
#              RANK_LAUNCHER=<Hydra launcher> (default basic: one group at a time; each already
#              trains its three seeds in one process), RANK_ARCHS (default encoder,decoder,prefix_lm,encdec).
# Relaunching resumes: complete runs are skipped, interrupted ones continue from their checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ARCHCMP:-}"
if [[ -z "$BIN" && -x .venv/bin/archcmp-train ]]; then BIN=.venv/bin; fi
TRAIN="${BIN:+$BIN/}archcmp-train"
ANALYZE="${BIN:+$BIN/}archcmp-analyze"
SWEEP="${RANK_SWEEP:-multirun/rank}"
OUT="${RANK_OUT:-experiments/results/rank}"
LAUNCHER="${RANK_LAUNCHER:-basic}"
ARCHS="${RANK_ARCHS:-encoder,decoder,prefix_lm,encdec}"
start=$(date +%s)

"$TRAIN" experiment=rank "launcher=$LAUNCHER" "arch=$ARCHS" "hydra.sweep.dir=$SWEEP" "$@"
"$TRAIN" experiment=rank "launcher=$LAUNCHER" arch=decoder,encoder size=micro "+model.n_heads=1" \
  "run_name=\${arch.name}-\${size.name}-h1-\${task.name}-s\${seed}" "hydra.sweep.dir=$SWEEP" "$@"
trained=$(date +%s)
echo "rank.sh: training took $((trained - start)) s"

# shellcheck disable=SC2086
"$ANALYZE" rank "$SWEEP" --out "$OUT" ${RANK_ANALYZE_ARGS:-}
echo "rank.sh: analysis took $(($(date +%s) - trained)) s; total $(($(date +%s) - start)) s"
