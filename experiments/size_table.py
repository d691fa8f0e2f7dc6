"""Print the size ladder as a markdown table (parameters per architecture, per size).

    python experiments/size_table.py [--vocab 72]
"""
from __future__ import annotations

import argparse

from archcmp.model.accounting import count_params
from archcmp.training.settings import parse
from archcmp.training.loop import CONF_DIR

ARCHS = ["encoder", "decoder", "prefix_lm", "encdec"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=72, help="vocabulary size (72 = arithmetic tasks)")
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    from hydra import compose, initialize_config_dir

    sizes = ["d8", "d12", "femto", "d24", "pico", "nano", "micro", "tiny", "small", "medium", "base"]
    print("| size | " + " | ".join(ARCHS) + " | max/min | single-stack shape | encdec shape |")
    print("|---" * (len(ARCHS) + 4) + "|")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for size in sizes:
            counts, shapes = {}, {}
            for arch in ARCHS:
                s, shape = parse(compose("config", overrides=[f"arch={arch}", f"size={size}",
                                                              f"task.seq_len={args.seq_len}"]))
                counts[arch] = count_params(s.model_config(args.vocab, shape)).total
                shapes[arch] = shape
            d = shapes["decoder"]
            e = shapes["encdec"]
            print(f"| {size} | " + " | ".join(f"{counts[a]:,}" for a in ARCHS)
                  + f" | {max(counts.values()) / min(counts.values()):.3f}"
                  + f" | d={d['d_model']} L={d['n_layers']} H={d['n_heads']} ff={d['d_ff']}"
                  + f" | d={e['d_model']} L={e['n_enc_layers']}+{e['n_dec_layers']} H={e['n_heads']} ff={e['d_ff']} |")


if __name__ == "__main__":
    main()
