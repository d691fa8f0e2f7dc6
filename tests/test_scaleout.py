"""Scale-out on CPU with simulated devices: data parallel and FSDP match one device for all four
architectures, parameters really are sharded, a 4x2 checkpoint restores on 8x1, a two-process
``jax.distributed`` run matches one process, bad mesh settings name their key, joblib jobs get
disjoint cores.

JAX in this pytest process is already running with one CPU device, so the multi-device runs are
subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=N. They are all started at
once by a module fixture (the machine has few cores; compilation dominates) while the one-device
references are computed here.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import scaleout_worker as worker
from archcmp.distributed import hosts
from archcmp.training.settings import ConfigError, parse
from archcmp.distributed.sharding import DEFAULT_RULES, MeshSettings, parse_mesh, partition_spec
from archcmp.tracking.tracker import read_jsonl
from archcmp.training.trainer import train
from hydra_cfg import compose_cfg

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-5
RUN = ["arch=decoder", "size=nano", "train.steps=20", "train.batch_size=16", "train.eval_examples=32",
       "train.eval_batch_size=16", "train.log_every=1", "train.eval_every=10", "train.checkpoint_every=10",
       "train.progress=false", "task.seq_len=24"]


def _env(n_devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    def __init__(self, args, cwd, n_devices):
        self.log = open(Path(cwd) / f"job-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(n_devices), stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout=600):
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.log.seek(0)
        return code, self.log.read()[-3000:]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Every subprocess of this module, started together."""
    tmp = tmp_path_factory.mktemp("scaleout")
    port = _free_port()
    started = {"worker": Job([str(ROOT / "tests" / "scaleout_worker.py"), str(tmp / "worker.json")], tmp, 8)}
    for pid in (0, 1):
        started[f"host{pid}"] = Job(
            ["-m", "archcmp.training.loop", *RUN, f"distributed.coordinator_address=127.0.0.1:{port}",
             "distributed.num_processes=2", f"distributed.process_id={pid}", "hydra.run.dir=multihost"], tmp, 4)
    yield tmp, started
    for job in started.values():
        if job.proc.poll() is None:
            job.proc.kill()


@pytest.fixture(scope="module")
def worker_result(jobs):
    tmp, started = jobs
    code, log = started["worker"].wait()
    assert code == 0, log
    return json.loads((tmp / "worker.json").read_text())


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / np.abs(a)))


# ---- mesh runs against one device ----------------------------------------------------------------
@pytest.mark.slow
def test_data_parallel_and_fsdp_match_one_device_for_every_arch(worker_result):
    from archcmp.distributed.sharding import Placement

    assert worker_result["n_devices"] == 8
    for arch in worker.ARCHS:
        single, _, _ = worker.train_steps(arch, Placement())  # this process: one CPU device, no mesh
        got = worker_result["archs"][arch]
        assert len(single) == len(got["dp"]) == len(got["fsdp"]) == worker.STEPS
        assert single[-1] < single[0]  # it trains
        assert _rel(single, got["dp"]) < RTOL, (arch, single, got["dp"])
        assert _rel(single, got["fsdp"]) < RTOL, (arch, single, got["fsdp"])


@pytest.mark.slow
def test_parameters_and_optimizer_state_really_are_sharded(worker_result):
    for arch in worker.ARCHS:
        got = worker_result["archs"][arch]
        for path, (shape, spec, shard, mu_spec, n_dev) in got["dp_layout"].items():
            assert spec == "P()" and shard == shape and n_dev == 8, (arch, path)  # data parallel: replicated
        for path, (shape, spec, shard, mu_spec, n_dev) in got["fsdp_layout"].items():
            # FSDP 4x2: every parameter here has a dim divisible by 2 -> half of it on each fsdp shard.
            assert "fsdp" in spec and n_dev == 8, (arch, path, spec)
            assert np.prod(shard) * 2 == np.prod(shape), (arch, path, shape, shard)
            assert mu_spec == spec, (arch, path)  # Adam's moments are sharded like their parameters
        table = got["fsdp_layout"]["embed/table/.value"]
        assert table[1] == "P(None, 'fsdp')"  # [vocab, embed]: embed -> fsdp by the rules
        layers = [v for k, v in got["fsdp_layout"].items() if "blocks" in k]
        assert layers and all(not v[1].startswith("P('fsdp'") for v in layers)  # the scanned layer axis stays whole


@pytest.mark.slow
def test_checkpoint_from_4x2_mesh_restores_on_8x1_and_continues(worker_result):
    for arch in worker.ARCHS:
        got = worker_result["archs"][arch]
        assert all(v[1] == "P()" for v in got["restored_layout"].values())  # the target's (8x1) shardings
        assert len(got["resumed"]) == worker.STEPS - worker.SAVE_AT
        assert _rel(got["fsdp"][worker.SAVE_AT:], got["resumed"]) < RTOL, arch


@pytest.mark.slow
def test_mesh_errors_name_their_key_and_device_flags_reach_xla(worker_result):
    errors = worker_result["errors"]
    assert errors["mesh"].startswith("mesh.data=3:") and "8" in errors["mesh"]
    assert errors["batch"].startswith("train.batch_size=12:")
    assert "--xla_cpu_enable_fast_math=false" in worker_result["xla_flags"]  # set before the backend started


# ---- two processes --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_run_matches_one_process(jobs):
    tmp, started = jobs
    reference = train(compose_cfg(RUN), tmp / "single")  # one process, one device (while the hosts run)
    logs = [started[f"host{pid}"].wait() for pid in (0, 1)]
    for code, log in logs:
        assert code == 0, log
        assert "complete" in log
    run = tmp / "multihost"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["processes"] == 2 and summary["devices"] == 8 and summary["mesh"]["data"] == 8
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "train_loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 21))  # written once: only process 0 records
    ref = {r["step"]: r for r in read_jsonl(tmp / "single" / "metrics.jsonl") if "train_loss" in r}
    assert _rel([ref[r["step"]]["train_loss"] for r in rows], [r["train_loss"] for r in rows]) < RTOL
    assert summary["eval_loss"] == pytest.approx(reference["eval_loss"], rel=RTOL)
    assert summary["data_fingerprint"] == reference["data_fingerprint"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]


# ---- in-process: rules, config errors, presets, CPU shares ----------------------------------------
def test_partition_specs_follow_the_rules():
    from jax.sharding import PartitionSpec as P

    rules = dict(DEFAULT_RULES)
    names = ("layers", "embed", "qkv", "heads", "kv")
    shape = (2, 48, 3, 4, 12)
    assert partition_spec(shape, names, rules, {"data": 8, "fsdp": 1, "tensor": 1}) == P()
    assert partition_spec(shape, names, rules, {"data": 4, "fsdp": 2, "tensor": 1}) == P(None, "fsdp")
    assert partition_spec(shape, names, rules, {"data": 2, "fsdp": 2, "tensor": 2}) == P(None, "fsdp", None, "tensor")
    # embed (48) does not divide by 32: the largest divisible dim other than layers takes fsdp instead
    assert partition_spec((2, 48, 64), ("layers", "embed", "mlp"), rules,
                          {"data": 1, "fsdp": 32, "tensor": 1}) == P(None, None, "fsdp")
    assert partition_spec((72, 48), ("vocab", "embed"), rules, {"data": 1, "fsdp": 5, "tensor": 1}) == P()


def test_every_parameter_has_one_logical_name_per_dim():
    import jax
    from flax import nnx

    from archcmp.model.config import ModelConfig
    from archcmp.model.models import build_model
    from archcmp.distributed.sharding import LOGICAL_AXES, logical_names

    for arch in worker.ARCHS:
        cfg = ModelConfig(arch=arch, vocab_size=40, d_model=16, n_heads=2, d_ff=32, max_len=16,
                          pos_encoding="relative" if arch == "encdec" else "learned", tie_embeddings=arch != "decoder")
        state = nnx.state(build_model(cfg, 0), nnx.Param)
        for var in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
            names = logical_names(var)
            assert names is not None and len(names) == var.ndim and set(names) <= set(LOGICAL_AXES), names


@pytest.mark.parametrize("override, key", [
    ("mesh.data=0", "mesh.data=0"),
    ("mesh.fsdp=-1", "mesh.fsdp=-1"),
    ("+mesh.pipeline=2", "mesh.pipeline"),
    ("+sharding.rules.embd=fsdp", "sharding.rules.embd"),
    ("sharding.rules.embed=gpu", "sharding.rules.embed='gpu'"),
    ("distributed.coordinator_address=localhost:1234", "distributed.num_processes: missing"),
    ("device.dtype=float8", "device.dtype='float8'"),
])
def test_bad_scale_settings_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        parse(compose_cfg([override]))
    assert str(err.value).startswith(key), str(err.value)


@pytest.mark.parametrize("override, key", [("mesh.data=2", "mesh.data=2"), ("device=gpu", "device='gpu'")])
def test_mesh_or_device_not_matching_this_machine_fails_before_training(override, key, tmp_path):
    with pytest.raises(ConfigError) as err:
        train(compose_cfg([*RUN, override]), tmp_path)
    assert str(err.value).startswith(key), str(err.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_mesh_sizes_resolve_or_fail_by_name():
    assert MeshSettings(data=-1, fsdp=2).resolve(8) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert parse_mesh({"mesh": {"data": 2, "fsdp": 2, "tensor": -1}}).resolve(8)["tensor"] == 2
    with pytest.raises(ConfigError, match=r"^mesh\.data=-1: the other axes \(3 devices\)"):
        MeshSettings(data=-1, fsdp=3).resolve(8)


def test_device_presets_set_compute_and_param_dtypes():
    expected = {"cpu": ("float32", "float32"), "gpu": ("bfloat16", "float32"), "tpu": ("bfloat16", "float32")}
    for name, (dtype, param_dtype) in expected.items():
        settings, shape = parse(compose_cfg([f"device={name}"]))
        model = settings.model_config(72, shape)
        assert (settings.device.platform, model.dtype, model.param_dtype) == (name, dtype, param_dtype)
        # the fused attention of the platform: jax.nn.dot_product_attention (cuDNN / XLA) on accelerators
        assert model.attention_impl == ("blocked" if name == "cpu" else "xla")
    settings, shape = parse(compose_cfg(["device=gpu", "+model.dtype=float32"]))
    assert settings.model_config(72, shape).dtype == "float32"  # model.* still wins
    assert parse(compose_cfg(["device=tpu"]))[0].mesh.fsdp == -1


def test_cpu_shares_are_disjoint_and_wait_when_all_are_taken(tmp_path):
    a = hosts.acquire_cpu_share(2, tmp_path, cores=[0, 1, 2, 3])
    b = hosts.acquire_cpu_share(2, tmp_path, cores=[0, 1, 2, 3])
    assert sorted([a.cores, b.cores]) == [[0, 1], [2, 3]]
    with pytest.raises(TimeoutError):
        hosts.acquire_cpu_share(2, tmp_path, cores=[0, 1, 2, 3], timeout=0.5)
    a.release()
    c = hosts.acquire_cpu_share(2, tmp_path, cores=[0, 1, 2, 3], timeout=5)
    assert c.cores == a.cores
    b.release(), c.release()
    # more jobs than cores: one core each, the extra job waits instead of sharing a core
    shares = [hosts.acquire_cpu_share(8, tmp_path / "x", cores=[0, 1]) for _ in range(2)]
    assert sorted(s.cores for s in shares) == [[0], [1]]
    with pytest.raises(TimeoutError):
        hosts.acquire_cpu_share(8, tmp_path / "x", cores=[0, 1], timeout=0.3)


def test_joblib_job_pins_every_thread_of_its_process(tmp_path):
    """After JAX started its thread pools, claiming a share moves every thread onto the share."""
    code = (
        "import os, json, jax, jax.numpy as jnp\n"
        "jnp.ones((64, 64)).dot(jnp.ones((64, 64))).block_until_ready()\n"
        "from archcmp.training.loop import _set_cpu_threads\n"
        f"_set_cpu_threads(2, {str(tmp_path)!r})\n"
        "tids = os.listdir('/proc/self/task')\n"
        "print(json.dumps({'threads': len(tids), 'cores': sorted({tuple(sorted(os.sched_getaffinity(int(t)))) "
        "for t in tids}), 'omp': os.environ['OMP_NUM_THREADS']}))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(1), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ncores = len(os.sched_getaffinity(0))
    per = ncores // min(2, ncores)
    assert got["threads"] > 1 and len(got["cores"]) == 1  # all threads: one and the same set of cores
    assert len(got["cores"][0]) == per and got["omp"] == str(per)


HUGE_PAGES_PROBE = """
import os, sys
from archcmp.distributed.hosts import use_huge_pages
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
use_huge_pages()
print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
"""


def test_console_scripts_restart_once_with_huge_page_malloc(tmp_path):
    """use_huge_pages re-executes the same process (same pid, same arguments) once with the glibc
    tunable set, keeps tunables the user had, and leaves the process alone when opted out."""
    script = tmp_path / "probe.py"
    script.write_text(HUGE_PAGES_PROBE)

    def run(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ARCHCMP_NO_HUGE_PAGES")}
        out = subprocess.run([sys.executable, str(script), "a", "b=1"], env={**base, **env},
                             capture_output=True, text=True, check=True, timeout=120).stdout
        return [line.split(" ", 2) for line in out.splitlines()]

    lines = run()
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        assert [w[0] for w in lines] == ["start", "start", "run"]  # restarted exactly once
        assert lines[0][1] == lines[1][1] == lines[2][1]  # exec: the same process
        assert lines[2][2] == "glibc.malloc.hugetlb=1 ['a', 'b=1']"
        kept = run(GLIBC_TUNABLES="glibc.malloc.arena_max=2")
        assert kept[-1][2] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1 ['a', 'b=1']"
    else:  # nothing to restart for
        assert [w[0] for w in lines] == ["start", "run"]
    opted_out = run(ARCHCMP_NO_HUGE_PAGES="1")
    assert [w[0] for w in opted_out] == ["start", "run"] and opted_out[1][2] == "None ['a', 'b=1']"
