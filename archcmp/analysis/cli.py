"""`archcmp-analyze {scaling,rank,emergence,grokking,induction,extrapolation,decoding,finetune,seeds,sweep} PATH ...` — dispatches to the probe modules.

Each probe module exposes ``run_cli(argv: list[str]) -> int``; its own argparse parser
documents its options (``archcmp-analyze scaling --help``).
"""
from __future__ import annotations

import importlib
import sys

PROBES = {
    "scaling": "archcmp.analysis.scaling.cli",
    "rank": "archcmp.analysis.rank.cli",
    "emergence": "archcmp.analysis.emergence.cli",
    "grokking": "archcmp.analysis.grokking.cli",
    "induction": "archcmp.analysis.induction.cli",
    "extrapolation": "archcmp.analysis.extrapolation.cli",
    "decoding": "archcmp.analysis.decoding.cli",
    "finetune": "archcmp.analysis.finetune.cli",
    "seeds": "archcmp.analysis.seeds.cli",
    "sweep": "archcmp.analysis.seeds.sweep",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: archcmp-analyze {" + ",".join(PROBES) + "} PATH [PATH ...] [options]")
        return 0 if argv else 2
    probe, rest = argv[0], argv[1:]
    if probe not in PROBES:
        print(f"archcmp-analyze: unknown probe {probe!r}; choose one of {sorted(PROBES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(PROBES[probe])
    return int(module.run_cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
