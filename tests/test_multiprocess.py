"""Two JAX processes x 2 CPU devices (gloo collectives) run the real entry point — training with
FSDP, validations and checkpoints, a resume, `--mode=eval` — and match one process x 4 devices
step for step. Subprocesses: the process boundary is what is tested."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
from cluster_fixtures import SlurmCluster, missing_programs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [
    "--config=configs/tnlbt.py:tiny",
    "--config.train.fsdp=True",
    "--config.train.fsdp_min_size=512",
    "--config.train.eval_every=3",
    "--config.train.checkpoint_every=3",
    "--config.train.log_every=2",
    "--config.train.val_pairs=32",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
    )
    env.update(extra)
    return env


def _main(
    args: list[str],
    *,
    processes: int,
    devices: int,
    program: tuple[str, ...] = ("-m", "xmodal.main"),
    caches: tuple[str, ...] = (),
) -> list[str]:
    """Run `python -m xmodal.main ARGS` (or another `program`) as `processes` processes of
    `devices` devices each; returns each process's output (all must exit 0). `caches`: each
    process's own compilation cache (as on hosts with local caches; default: the session's)."""
    cmd = [sys.executable, *program, *args]
    port = _free_port()
    # Each process's output goes to a file, not a pipe: a process blocked writing to a full
    # pipe while the others wait for it in a collective would hang the job.
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(processes)]
        procs = [
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=_env(devices)
                if processes == 1
                else _env(
                    devices,
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(processes),
                    JAX_PROCESS_ID=str(i),
                    **({"JAX_COMPILATION_CACHE_DIR": caches[i]} if caches else {}),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i, log in enumerate(logs)
        ]
        for p in procs:
            p.wait(timeout=900)
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outs


# How a launcher tells each process its rank (for its log file).
RANK_VARIABLES = {"srun": "SLURM_PROCID", "mpirun": "OMPI_COMM_WORLD_RANK"}


def _launch(launcher: str, args: list[str], *, processes: int, devices: int, env: dict) -> list:
    """`python -m xmodal.main ARGS` as `processes` tasks of `srun` (the test cluster's, `env`
    holds its SLURM_CONF) or `mpirun`, each with `devices` CPU devices and no JAX_* variables:
    the job is found by JAX's cluster detection, as on a real cluster. Returns each process's
    output (the launcher must exit 0)."""
    logs = tempfile.mkdtemp(prefix=f"xmodal-{launcher}-")
    program = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "xmodal.main", *args])
    task = f'exec {program} > {logs}/"${RANK_VARIABLES[launcher]}".log 2>&1'
    env = {**env, **_env(devices)}
    if launcher == "srun":
        cmd = ["srun", "-n", str(processes), "--overcommit", "--export=ALL"]
    else:
        forwarded = ("PYTHONPATH", "JAX_PLATFORMS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(processes)]
        cmd += [x for k in forwarded for x in ("-x", k)]
    proc = subprocess.run(
        [*cmd, "bash", "-c", task], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    outs = []
    for rank in range(processes):
        with open(os.path.join(logs, f"{rank}.log")) as f:
            outs.append(f.read())
    shutil.rmtree(logs)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + outs[0][-3000:]
    return outs


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster for this module's srun launches."""
    missing = missing_programs() + [p for p in ("mpirun",) if not shutil.which(p)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: the srun and mpirun launches need Debian's "
            "slurm-wlm and openmpi-bin (README: tests)"
        )
    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    cluster.start()
    yield cluster
    cluster.stop()


def _curve(workdir: str) -> list[tuple[int, str, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    keys = ("loss", "val_recall@1", "val_medR_i2r")
    return [(r["step"], k, r[k]) for r in rows for k in keys if k in r]


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[prefix + k] = v
    return out


def _eval(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval_test.json")) as f:
        return json.load(f)


def test_two_processes_match_one_through_train_resume_and_eval(tiny_data, tmp_path, slurm):
    """Trained through `srun` (JAX's SLURM detection), resumed through `mpirun` (its Open MPI
    detection), evaluated with the explicit variables: every launch line of docs/performance.md
    joins one job, and the job trains step for step like one process x 4 devices."""
    data = f"--config.data.dir={tiny_data}"
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    outs = _launch(
        "srun",
        [*TRAIN, data, f"--workdir={two}", "--config.train.num_steps=6"],
        processes=2,
        devices=2,
        env=slurm.env,
    )
    assert "step 6: val" in outs[0] and "step 6: val" not in outs[1]  # process 0 prints
    outs = _launch(
        "mpirun",
        [*TRAIN, data, f"--workdir={two}", "--config.train.num_steps=8"],
        processes=2,
        devices=2,
        env=dict(os.environ),
    )
    assert "resumed from" in outs[0] and "at step 6" in outs[0]
    _main([*TRAIN, data, f"--workdir={one}", "--config.train.num_steps=8"], processes=1, devices=4)

    got, want = _curve(two), _curve(one)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for (step, key, a), (_, _, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), (step, key)
    assert _flat(_eval(two)) == pytest.approx(_flat(_eval(one)), rel=1e-4)

    os.remove(os.path.join(two, "eval_test.json"))
    _main(
        [*TRAIN, data, f"--workdir={two}", "--mode=eval", "--checkpoint=latest"],
        processes=2,
        devices=2,
    )
    assert _eval(two)["step"] == 8
    assert _flat(_eval(two)) == pytest.approx(_flat(_eval(one)), rel=1e-4)
    with open(os.path.join(two, "config.json")) as f:
        assert json.load(f)["run"]["processes"] == 2


def test_a_process_with_a_warm_cache_waits_for_the_others_before_the_first_collective(
    tiny_data, tmp_path
):
    """Process 0 gets the train step from its compilation cache in about a second while process 1
    compiles it (a cold cache: another host's, or JAX's multi-process caching, which writes from
    process 0 only). Before, process 0 entered the step's collectives alone and gloo, which waits
    30 s for a new communicator, aborted the job under load; now it waits at the coordination
    service's barrier until every process has compiled, and the job runs as with cold caches."""
    warm, cold = str(tmp_path / "warm"), str(tmp_path / "cold")
    args = [
        *TRAIN,
        f"--config.data.dir={tiny_data}",
        "--config.train.num_steps=2",
        "--config.train.eval_at_end=False",
    ]
    first = str(tmp_path / "first")
    _main([*args, f"--workdir={first}"], processes=2, devices=2, caches=(warm, cold + "-0"))
    assert os.listdir(warm)  # process 0 wrote its programs
    second = str(tmp_path / "second")
    outs = _main([*args, f"--workdir={second}"], processes=2, devices=2, caches=(warm, cold))
    waited = re.search(r"waited ([0-9.]+) s for every process to compile the train step", outs[0])
    assert waited and float(waited.group(1)) >= 1.0, outs[0][-3000:]
    assert _curve(second) == _curve(first)


def test_resume_with_another_process_count_is_refused(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    args = [*TRAIN, f"--config.data.dir={tiny_data}", f"--workdir={workdir}"]
    _main([*args, "--config.train.num_steps=3"], processes=2, devices=2)
    proc = subprocess.run(
        [sys.executable, "-m", "xmodal.main", *args, "--config.train.num_steps=6"],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "written by 2 process(es), this run has 1" in proc.stderr


def test_a_coordinator_without_the_process_count_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xmodal.main",
            "--config=configs/tnlbt.py:tiny",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "set JAX_NUM_PROCESSES and JAX_PROCESS_ID" in proc.stderr


def test_bench_train_measures_the_per_process_batch_of_a_two_process_job(tiny_data, tmp_path):
    """bench_train joins the job like xmodal.main (before: `jax.distributed.initialize()` without
    the process count, which stops), runs the step over the 4 global devices, and times each
    process's pipeline making its half of the global batch; only process 0 prints and writes."""
    out = tmp_path / "bench.json"
    args = [
        "--config=configs/tnlbt.py:tiny",
        "--config.model.vit.depth=1",
        "--config.data.max_ingredients=3",
        "--config.data.max_instructions=3",
        "--config.model.cross_decoder.enabled=False",  # its compile is not what is under test
        "--config.loss.cross_decoder=0.0",
        f"--config.data.dir={tiny_data}",
        "--mode=pipeline",
        "--steps=2",
        "--warmup=1",
        f"--out={out}",
    ]
    outs = _main(args, processes=2, devices=2, program=("tools/bench_train.py",))
    assert "examples/s" in outs[0] and "examples/s" not in outs[1]
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert report["processes"] == 2 and row["devices"] == 4
    assert row["per_process_batch"] == report["batch_size"] // 2
    assert row["host_pipeline_examples_per_sec_per_process"] > 0
    assert "batch 8 per process" in outs[0]
