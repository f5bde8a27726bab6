"""Two JAX processes x 2 CPU devices (gloo collectives) run the real entry point — training with
FSDP, validations and checkpoints, a resume, `--mode=eval` — and match one process x 4 devices
step for step. Subprocesses: the process boundary is what is tested."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pytest
from cluster_fixtures import SlurmCluster, missing_programs
from tensorboardX.proto.event_pb2 import Event
from test_long_run import _tfrecords

from xmodal.training.loop import SAMPLES_TAG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What is tested is the process boundary, and every launch compiles the step in each process (CPU
# processes of a job do not use the persistent cache: xmodal.runtime.distributed): JE's tiny model
# (a small ResNet, LSTMs in scans, class heads), whose step compiles in 6 s where TNLBT's tiny
# with one ViT block takes 16 (compile_s of `tools/bench_train.py --config=configs/je.py:tiny
# --config.train.fsdp=True --config.train.fsdp_min_size=512 --devices=4`, README's suite note).
CONFIG = "configs/je.py:tiny"
LEAN = [f"--config={CONFIG}"]
TRAIN = [
    *LEAN,
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
        # Unoptimised CPU code compiles faster; the runs compared all use it.
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
    )
    env.update(extra)
    return env


def _start(
    args: list[str],
    *,
    processes: int,
    devices: int,
    logs: str,
    program: tuple[str, ...] = ("-m", "xmodal.main"),
    caches: tuple[str, ...] = (),
) -> list[subprocess.Popen]:
    """Start `python -m xmodal.main ARGS` (or another `program`) as `processes` processes of
    `devices` devices each, joined by the explicit variables; process i writes LOGS/i.log.
    `caches`: each process's own compilation cache (as on hosts with local caches; default:
    the session's)."""
    cmd = [sys.executable, *program, *args]
    port = _free_port()
    os.makedirs(logs, exist_ok=True)
    procs = []
    for i in range(processes):
        joined = {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": str(processes),
            "JAX_PROCESS_ID": str(i),
            **({"JAX_COMPILATION_CACHE_DIR": caches[i]} if caches else {}),
        }
        # Output to a file, not a pipe: a process blocked writing to a full pipe while the
        # others wait for it in a collective would hang the job.
        with open(os.path.join(logs, f"{i}.log"), "w") as log:
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=REPO,
                    env=_env(devices, **(joined if processes > 1 else {})),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    return procs


def _read(logs: str, processes: int, suffix: str = "log") -> list[str]:
    outs = []
    for i in range(processes):
        with open(os.path.join(logs, f"{i}.{suffix}")) as f:
            outs.append(f.read())
    return outs


def _main(
    args: list[str], *, processes: int, devices: int, timeout: int = 900, **kwargs
) -> list[str]:
    """`_start`, then wait up to `timeout` seconds: returns each process's output (all must exit
    0; a process still running then is killed and fails the test)."""
    logs = tempfile.mkdtemp(prefix="xmodal-main-")
    procs = _start(args, processes=processes, devices=devices, logs=logs, **kwargs)
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        outs = _read(logs, processes)
        pytest.fail(f"the job ran past {timeout} s: {[o[-2000:] for o in outs]}")
    outs = _read(logs, processes)
    shutil.rmtree(logs)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return outs


# How a launcher tells each process its rank (for its log file).
RANK_VARIABLES = {"srun": "SLURM_PROCID", "mpirun": "OMPI_COMM_WORLD_RANK"}
JOB_NAME = "xmodal-test"


def _start_launch(
    launcher: str, args: list[str], *, processes: int, devices: int, env: dict, logs: str
) -> subprocess.Popen:
    """`python -m xmodal.main ARGS` as `processes` tasks of `srun` (the test cluster's, `env`
    holds its SLURM_CONF) or `mpirun`, each with `devices` CPU devices and no JAX_* variables:
    the job is found by JAX's cluster detection, as on a real cluster. Task r writes LOGS/r.log
    and its exit status to LOGS/r.rc; the launcher's own output goes to LOGS/launcher.log."""
    os.makedirs(logs, exist_ok=True)
    program = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "xmodal.main", *args])
    rank = f'{logs}/"${RANK_VARIABLES[launcher]}"'
    # The shell records xmodal.main's pid and exit status; it outlives a SIGTERM (SLURM signals
    # every process of a task) and passes it on, so xmodal.main may get it twice, as from
    # scancel and an srun that forwards it.
    task = (
        f"{program} > {rank}.log 2>&1 & child=$!; echo $child > {rank}.pid; "
        "trap 'kill -TERM $child' TERM; "
        "wait $child; status=$?; "
        "while kill -0 $child 2>/dev/null; do wait $child; status=$?; done; "
        f"echo $status > {rank}.rc"
    )
    env = {**env, **_env(devices)}
    if launcher == "srun":
        cmd = ["srun", "-n", str(processes), "--overcommit", "--export=ALL"]
        cmd += [f"--job-name={JOB_NAME}"]
    else:
        forwarded = ("PYTHONPATH", "JAX_PLATFORMS", "XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(processes)]
        cmd += [x for k in forwarded for x in ("-x", k)]
    with open(os.path.join(logs, "launcher.log"), "w") as out:
        return subprocess.Popen(
            [*cmd, "bash", "-c", task], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _finish_launch(proc: subprocess.Popen, logs: str, processes: int) -> list[str]:
    """Wait for a `_start_launch` job: returns each task's output (the launcher and every task
    must exit 0)."""
    proc.wait(timeout=900)
    outs = _read(logs, processes)
    with open(os.path.join(logs, "launcher.log")) as f:
        launcher = f.read()
    assert proc.returncode == 0, launcher[-2000:] + outs[0][-3000:]
    statuses = [s.strip() for s in _read(logs, processes, "rc")]
    assert statuses == ["0"] * processes, [o[-3000:] for o in outs]
    return outs


def _launch(launcher: str, args: list[str], *, processes: int, devices: int, env: dict) -> list:
    logs = tempfile.mkdtemp(prefix=f"xmodal-{launcher}-")
    proc = _start_launch(launcher, args, processes=processes, devices=devices, env=env, logs=logs)
    outs = _finish_launch(proc, logs, processes)
    shutil.rmtree(logs)
    return outs


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM cluster for this module's srun launches."""
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed: the srun launches need Debian's slurm-wlm "
            "(README: tests)"
        )
    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    cluster.start()
    yield cluster
    cluster.stop()


def _metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _wait_for(workdir: str, running: Callable[[], bool], key: str, step: int) -> None:
    """Until process 0 has written `key` for `step` (or later) to WORKDIR/metrics.jsonl, while
    the job is `running()`."""
    deadline = time.monotonic() + 600
    while not any(r["step"] >= step and key in r for r in _metrics(workdir)):
        assert running(), "the job ended early"
        assert time.monotonic() < deadline, f"no {key} at step {step} in 600 s"
        time.sleep(0.2)


def _curve(workdir: str) -> list[tuple[int, str, float]]:
    rows = _metrics(workdir)
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


def _assert_trained_alike(workdir: str, reference: str) -> None:
    """The same logged steps, losses and validations, and the same test scores, within 1e-4."""
    got, want = _curve(workdir), _curve(reference)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for (step, key, a), (_, _, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), (step, key)
    assert _flat(_eval(workdir)) == pytest.approx(_flat(_eval(reference)), rel=1e-4)


# A stop on SIGTERM after the step-3 validation leaves 4 steps to agree on one (each step of a
# launched job takes seconds on a loaded 2-core machine; fewer steps, fewer seconds of gloo waits).
STEPS = 8


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory) -> str:
    """The reference: the same run as one process x 4 devices, uninterrupted."""
    workdir = str(tmp_path_factory.mktemp("one"))
    args = [*TRAIN, f"--config.data.dir={tiny_data}", f"--config.train.num_steps={STEPS}"]
    _main([*args, f"--workdir={workdir}"], processes=1, devices=4)
    return workdir


def _launcher_env(launcher: str, request) -> dict:
    if launcher == "srun":
        return request.getfixturevalue("slurm").env
    if not shutil.which("mpirun"):
        pytest.skip("mpirun not installed: the mpirun launches need Debian's openmpi-bin")
    return dict(os.environ)


def _preempt(launcher: str, logs: str, processes: int, env: dict) -> None:
    """SIGTERM to every process, as a scheduler preempting the job sends it."""
    if launcher == "srun":  # SIGCONT and SIGTERM to every task, SIGKILL after KillWait (60 s)
        subprocess.run(["scancel", f"--name={JOB_NAME}"], env=env, check=True)
    else:  # to each process, as SLURM does to an mpirun job's processes (not to mpirun)
        for pid in _read(logs, processes, "pid"):
            os.kill(int(pid), signal.SIGTERM)


@pytest.mark.xdist_group("launchers")  # one reference run and one SLURM for both launchers
@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_a_launched_job_stops_at_one_step_on_sigterm_resumes_and_evaluates_like_one_process(
    launcher, tiny_data, tmp_path, request, one_process
):
    """Two processes x 2 devices through `srun` (JAX's SLURM detection) or `mpirun` (its Open
    MPI detection), launched as docs/performance.md says: trained with validations and
    checkpoints and preempted after the step-3 validation (`scancel`; SIGTERM to each process),
    every process stops after one agreed step with a checkpoint and exits 0; the same command
    resumes there, and the job matches one process x 4 devices step for step. Under srun,
    `--mode=eval` then evaluates like one process too (once the processes have joined, the
    evaluation does not depend on the launcher: mpirun's would repeat srun's)."""
    env = _launcher_env(launcher, request)
    two = str(tmp_path / "two")
    args = [
        *TRAIN,
        f"--config.data.dir={tiny_data}",
        f"--workdir={two}",
        f"--config.train.num_steps={STEPS}",
    ]
    logs = str(tmp_path / "logs")
    job = _start_launch(launcher, args, processes=2, devices=2, env=env, logs=logs)
    _wait_for(two, lambda: job.poll() is None, "val_recall@1", step=3)
    _preempt(launcher, logs, 2, env)
    outs = _finish_launch(job, logs, processes=2)  # every process exits 0
    stopped = re.search(r"stopped by a preemption notice \(SIGTERM\) after step (\d+)", outs[0])
    assert stopped, outs[0][-3000:]
    at = int(stopped.group(1))
    assert 3 <= at < STEPS
    saved = sorted(int(d) for d in os.listdir(os.path.join(two, "checkpoints")) if d.isdigit())
    assert saved[-1] == at  # written by both processes: each stopped after step `at`

    outs = _launch(launcher, args, processes=2, devices=2, env=env)
    assert f"at step {at}" in outs[0] and "resumed from" in outs[0]
    last = f"step {STEPS}: val"
    assert last in outs[0] and last not in outs[1]  # process 0 prints
    _assert_trained_alike(two, one_process)
    if launcher != "srun":
        return

    os.remove(os.path.join(two, "eval_test.json"))
    _launch(
        launcher, [*args, "--mode=eval", "--checkpoint=latest"], processes=2, devices=2, env=env
    )
    assert _eval(two)["step"] == STEPS
    assert _flat(_eval(two)) == pytest.approx(_flat(_eval(one_process)), rel=1e-4)
    with open(os.path.join(two, "config.json")) as f:
        assert json.load(f)["run"]["processes"] == 2


# tools/xmodal.sbatch's one-node CPU form (docs/performance.md).
ONE_CPU_NODE = [
    "--nodes=1",
    "--ntasks-per-node=2",
    "--gpus-per-node=0",
    "--cpus-per-task=1",
    "--time=10",
]


def _job_state(job: str, env: dict) -> dict[str, str]:
    shown = subprocess.run(
        ["scontrol", "show", "job", job], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


@pytest.mark.xdist_group("launchers")
def test_the_sbatch_script_saves_before_the_time_limit_requeues_itself_and_resumes(
    tiny_data, tmp_path, slurm, one_process
):
    """tools/xmodal.sbatch on one CPU node, two tasks: USR1 to the batch script (what its
    `--signal=B:USR1@300` sends before the time limit; sent here after the step-3 validation)
    stops both tasks with a checkpoint, the script requeues the job, and the requeued job
    resumes there, finishes and evaluates: as one process x 4 devices, step for step."""
    workdir, log = str(tmp_path / "run"), tmp_path / "job.out"
    env = {
        **slurm.env,
        **_env(2),
        "CONFIG": CONFIG,
        "WORKDIR": workdir,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # its `python`
    }
    script = ["tools/xmodal.sbatch", *TRAIN[len(LEAN) :], f"--config.data.dir={tiny_data}"]
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *ONE_CPU_NODE,
            f"--output={log}",
            *script,
            f"--config.train.num_steps={STEPS}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    job = submitted.stdout.strip().split(";")[0]
    queued = ("PENDING", "CONFIGURING", "RUNNING")
    _wait_for(workdir, lambda: _job_state(job, env)["JobState"] in queued, "val_recall@1", 3)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    deadline = time.monotonic() + 900
    while (state := _job_state(job, env))["JobState"] in ("RUNNING", "PENDING", "COMPLETING"):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    out = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", (state, out[-3000:])
    stopped = re.search(r"stopped by a preemption notice \(SIGTERM\) after step (\d+)", out)
    assert stopped, out[-3000:]
    at = int(stopped.group(1))
    assert "out of time: checkpoint saved; requeued" in out
    assert f"job {job} (restart 1)" in out and f"at step {at}" in out
    _assert_trained_alike(workdir, one_process)


@pytest.mark.parametrize(
    ("fault", "heartbeat_timeout_s", "bound_s"),
    [("killed", 100, 60), ("hung", 10, 45)],
)
def test_when_a_process_dies_or_hangs_the_others_stop_with_an_error_in_bounded_time(
    fault, heartbeat_timeout_s, bound_s, tiny_data, tmp_path
):
    """Process 1 is killed (SIGKILL: the OOM killer, a lost host) or hangs (SIGSTOP) while
    training. Killed: process 0's next collective fails and it exits 1 at once, saying why,
    well before the heartbeat timeout (before: it waited at JAX's shutdown barrier until that
    timeout, then aborted). Hung: JAX's coordination service misses its heartbeats and ends
    process 0 after `--heartbeat_timeout_s`. Never a hang."""
    workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
    args = [
        *TRAIN,
        f"--config.data.dir={tiny_data}",
        f"--workdir={workdir}",
        "--config.train.num_steps=1000",
        "--config.train.log_every=1",
        "--config.train.eval_every=1000",
        f"--heartbeat_timeout_s={heartbeat_timeout_s}",
    ]
    procs = _start(args, processes=2, devices=2, logs=logs)
    try:
        _wait_for(workdir, lambda: all(p.poll() is None for p in procs), "loss", step=2)
        start = time.monotonic()
        procs[1].send_signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        procs[0].wait(timeout=300)
        took = time.monotonic() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    (out,) = _read(logs, 1)
    assert took < bound_s, (took, out[-3000:])
    if fault == "killed":
        assert procs[0].returncode == 1, out[-3000:]
        assert "[xmodal] process 0 of 2 stops on the error above" in out, out[-3000:]
    else:
        assert procs[0].returncode != 0, out[-3000:]


# Two processes x 2 devices, two steps of ACME's two players (LSTMs: a scan whose FSDP-sharded
# weights are gathered inside the loop), with the validation at the last step and its picture:
# the first job is kept for later tests.
SHORT = [
    "--config=configs/acme.py:tiny",
    *TRAIN[len(LEAN) :],
    "--config.train.eval_every=2",
    "--config.train.log_every=1",
    "--config.train.num_steps=2",
    "--config.train.eval_at_end=False",
]


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory) -> tuple[str, str, list[str]]:
    """(workdir, cache of process 0, outputs): a two-step job of two processes, each with its
    own compilation cache, as on hosts with local caches."""
    root = tmp_path_factory.mktemp("two-processes")
    workdir, cache = str(root / "run"), str(root / "cache0")
    args = [*SHORT, f"--config.data.dir={tiny_data}", f"--workdir={workdir}"]
    outs = _main(args, processes=2, devices=2, caches=(cache, str(root / "cache1")))
    return workdir, cache, outs


@pytest.mark.xdist_group("two_processes")  # one first job for the three
def test_two_processes_train_both_players_and_draw_the_validation_picture(two_processes):
    """ACME's two-player step over two processes' devices (FSDP), and the validation's picture
    of generated images: its draws are host values given to a program over the state's global
    arrays (replicated in), and its images are read back on every process (replicated out)."""
    workdir = two_processes[0]
    rows = _metrics(workdir)
    assert [r["step"] for r in rows if "val_recall@1" in r] == [2]
    trained = [r for r in rows if "loss_critic" in r]
    assert [r["step"] for r in trained] == [1, 2]
    for r in trained:
        assert all(math.isfinite(r[k]) for k in ("loss", "loss_critic", "loss_g_image"))
    folder = os.path.join(workdir, "tensorboard")
    pictures = [
        (Event.FromString(record).step, value.image.height)
        for name in os.listdir(folder)
        for record in _tfrecords(os.path.join(folder, name))
        for value in Event.FromString(record).summary.value
        if value.tag == SAMPLES_TAG
    ]
    assert len(pictures) == 1 and pictures[0][0] == 2 and pictures[0][1] > 0


@pytest.mark.xdist_group("two_processes")
def test_a_job_of_cpu_processes_neither_writes_nor_reads_the_compilation_cache(
    tiny_data, tmp_path, two_processes
):
    """JAX's CPU cache keys differ between processes and only process 0 writes, so a second
    job found process 0's cache warm: process 0 ran the step read back from disk beside process
    1's fresh compile, and in ACME's step (collectives inside the LSTMs' loops) its two devices
    waited in different collectives: the job hung in its first step (it ran past this test's
    300 s; measured with the fix reverted).
    Now CPU processes of a job compile every program (said on process 0's output), leave the
    cache empty, and a second job with the same caches runs as the first."""
    first, cache, first_outs = two_processes
    second = str(tmp_path / "second")
    args = [*SHORT, f"--config.data.dir={tiny_data}", f"--workdir={second}"]
    _main(args, processes=2, devices=2, caches=(cache, str(tmp_path / "cold")), timeout=300)
    assert _curve(second) == _curve(first)
    assert "the persistent compilation cache is off" in first_outs[0]
    assert not os.path.exists(cache) or not os.listdir(cache)


@pytest.mark.xdist_group("two_processes")
def test_resume_with_another_process_count_is_refused(tiny_data, tmp_path, two_processes):
    workdir = str(tmp_path / "run")
    shutil.copytree(two_processes[0], workdir)  # the two-process job's checkpoints, at step 2
    args = [*SHORT, f"--config.data.dir={tiny_data}", f"--workdir={workdir}"]
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
        *LEAN,
        "--config.data.max_ingredients=3",
        "--config.data.max_instructions=3",
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
