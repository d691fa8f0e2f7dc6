"""Suite-wide set-up: shared helpers on the path and a persistent XLA compilation cache.

A tiny training run is mostly compilation, and many tests (and the ``archcmp-train``
subprocesses they start) compile the same programs. The cache lives under the rootdir's
``.pytest_cache/jax-cache-locked`` (a fresh clone starts cold; a developer's second run
starts warm). It is set through the environment *before* JAX is imported, so subprocesses
inherit it; ``ARCHCMP_TEST_JAX_CACHE=off`` turns it off, a path moves it. The cache key is
the compiled program plus the JAX/XLA versions and flags, so a stale entry is never reused
for a different program. Compile-time measurements (``archcmp-bench``'s compile and decode
sections, ``experiments/compile_time.py``) switch it off themselves.

The README's fast set runs on two pytest-xdist workers (``-n 2``) that share the cache. A size
limit is set so JAX guards every cache read and write with a file lock (without one it writes
entries in place, and a worker could read another's half-written entry). Tests are handed out
a whole module at a time (``--dist loadfile``), so a module's fixtures are built once; the
session's ``tiny_runs`` are trained once for both workers (see the fixture).
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (wandb_files, hydra_cfg)


CACHE_LIMIT_BYTES = 32 * 2**30  # far above what the suite writes (a few MiB): nothing is evicted


def _compilation_cache_env() -> dict[str, str]:
    setting = os.environ.get("ARCHCMP_TEST_JAX_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return {}
    # Not the old jax-compile-cache: entries written without a size limit lack the access-time files
    # that JAX's size-limited cache reads, and every write into it would fail with a warning.
    cache_dir = Path(setting) if setting else ROOT / ".pytest_cache" / "jax-cache-locked"
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # tiny programs too: they are most of the suite
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(CACHE_LIMIT_BYTES),  # a limit turns on JAX's cache file lock
    }


_CACHE_ENV = _compilation_cache_env()
os.environ.update(_CACHE_ENV)  # read by JAX at import, inherited by every subprocess


def _test_xla_flags() -> str:
    """XLA_FLAGS for the suite: LLVM optimisation level 1 for the CPU backend's code generation.

    The suite's programs are tiny and run a few steps, so their cost is compilation, most of it
    LLVM optimising code that then runs for milliseconds. Measured on this 2-core machine (a 4-step
    nano decoder run from cold, CPU seconds): default level 21.1 s, level 1 9.9 s; 296 more steps
    cost 0.7 s at the default and 1.7 s at level 1. The whole fast set passed at level 1 (901 tests).
    Set before JAX is imported, so subprocesses inherit it; the flag is part of the compilation cache
    key. ``ARCHCMP_TEST_XLA_OPT=default`` leaves XLA_FLAGS alone; a flag the caller set wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("ARCHCMP_TEST_XLA_OPT", "").lower() == "default" or "xla_backend_optimization_level" in flags:
        return flags
    return f"{flags} --xla_backend_optimization_level=1".strip()


os.environ["XLA_FLAGS"] = _test_xla_flags()

if _CACHE_ENV and "jax" in sys.modules:  # a plugin imported JAX first: set the live config too
    import jax

    jax.config.update("jax_compilation_cache_dir", _CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_LIMIT_BYTES)


import pytest  # noqa: E402  (after the cache environment is set: pytest plugins may import JAX)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """One tiny training run per architecture (hydra_cfg.TINY), shared by every file that needs
    a finished run: arch -> (run_dir, summary). Each run sits alone in its own parent directory
    with the ``.hydra/config.yaml`` a real run writes, so analysis CLIs can be pointed at it.

    Trained once per suite run, also on two xdist workers: the runs live in the directory the
    workers' temporary directories share, and a file lock lets the first worker train them while
    the other waits and then reads them (``summary`` is the run's ``summary.json`` either way)."""
    import fcntl
    import json

    from omegaconf import OmegaConf

    from hydra_cfg import TINY, compose_cfg

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "tiny-runs"
    root.mkdir(exist_ok=True)
    archs = ("encoder", "decoder", "prefix_lm", "encdec")
    with open(shared / "tiny-runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "done").exists():
            from archcmp.training.trainer import train

            for arch in archs:
                cfg = compose_cfg([f"arch={arch}", *TINY])
                run_dir = root / f"tiny-{arch}" / f"{arch}-nano"
                train(cfg, run_dir)
                (run_dir / ".hydra").mkdir()
                OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
            (root / "done").touch()
    runs = {}
    for arch in archs:
        run_dir = root / f"tiny-{arch}" / f"{arch}-nano"
        runs[arch] = (run_dir, json.loads((run_dir / "summary.json").read_text()))
    return runs
