"""Suite-wide set-up: shared helpers on the path and a persistent XLA compilation cache.

A tiny training run is mostly compilation, and many tests (and the ``archcmp-train``
subprocesses they start) compile the same programs. The cache lives under the rootdir's
``.pytest_cache/jax-compile-cache`` (a fresh clone starts cold; a developer's second run
starts warm). It is set through the environment *before* JAX is imported, so subprocesses
inherit it; ``ARCHCMP_TEST_JAX_CACHE=off`` turns it off, a path moves it. The cache key is
the compiled program plus the JAX/XLA versions and flags, so a stale entry is never reused
for a different program. Compile-time measurements (``archcmp-bench``'s compile and decode
sections, ``experiments/compile_time.py``) switch it off themselves.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (wandb_files, hydra_cfg)


def _compilation_cache_env() -> dict[str, str]:
    setting = os.environ.get("ARCHCMP_TEST_JAX_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return {}
    cache_dir = Path(setting) if setting else ROOT / ".pytest_cache" / "jax-compile-cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # tiny programs too: they are most of the suite
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


_CACHE_ENV = _compilation_cache_env()
os.environ.update(_CACHE_ENV)  # read by JAX at import, inherited by every subprocess

if _CACHE_ENV and "jax" in sys.modules:  # a plugin imported JAX first: set the live config too
    import jax

    jax.config.update("jax_compilation_cache_dir", _CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402  (after the cache environment is set: pytest plugins may import JAX)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """One tiny training run per architecture (hydra_cfg.TINY), shared by every file that needs
    a finished run: arch -> (run_dir, summary). Each run sits alone in its own parent directory
    with the ``.hydra/config.yaml`` a real run writes, so analysis CLIs can be pointed at it."""
    from omegaconf import OmegaConf

    from archcmp.training.loop import train
    from hydra_cfg import TINY, compose_cfg

    runs = {}
    for arch in ("encoder", "decoder", "prefix_lm", "encdec"):
        cfg = compose_cfg([f"arch={arch}", *TINY])
        run_dir = tmp_path_factory.mktemp(f"tiny-{arch}") / f"{arch}-nano"
        summary = train(cfg, run_dir)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
        runs[arch] = (run_dir, summary)
    return runs
