"""Load time of each imported family (issue 19): ``archcmp.load_pretrained`` on the tiny golden
checkpoints (GPT-2, BERT, Llama, T5 v1.0, T5 v1.1) and, when present, real ones (all-MiniLM-L6-v2,
a directory; SmolLM2-135M-Instruct, a GGUF file or the directory holding it).

One process; a first load warms JAX up (its start-up is not a family's cost), then each directory is
loaded ``--repeats`` times and the median and min wall seconds are printed as a markdown table.
    python experiments/pretrained_load_times.py [--real DIR_OR_GGUF ...] [--repeats 3]
"""
import argparse
import statistics
import time
from pathlib import Path

from archcmp import load_pretrained

GOLDENS = Path(__file__).resolve().parent.parent / "tests" / "goldens" / "pretrained"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--real", action="append", type=Path, default=[])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dirs = sorted(d for d in GOLDENS.iterdir() if d.is_dir()) + [d for d in args.real if d.exists()]
    load_pretrained(dirs[0])  # JAX start-up
    print("| checkpoint | model_type | parameters | median s | min s |\n|---|---|---|---|---|")
    for d in dirs:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loaded = load_pretrained(d)
            times.append(time.perf_counter() - t0)
        from flax import nnx
        import numpy as np

        n = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(nnx.state(loaded.model, nnx.Param)))
        print(f"| {d.name} | {loaded.info['model_type']} | {n:,} | {statistics.median(times):.3f} | {min(times):.3f} |")


if __name__ == "__main__":
    main()
