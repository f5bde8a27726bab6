"""tools/gpu_check.py, the one script run on a lent GPU, runs here on CPU at tiny size: every
stage of its plan runs or says why not (the ones that need CUDA, by name), what comes back is
three files (the device tool brings back at most eight), and its must-run stages fit the GPU
issue's 8 minutes by their limits. A subprocess: the script is a command line, run as the GPU
machine runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import common  # noqa: E402
from tools import gpu_check  # noqa: E402

TINY = [
    "--config=configs/tnlbt.py:tiny",
    "--set=model.vit.depth=1",
    "--set=data.max_ingredients=3",
    "--set=data.max_instructions=3",
    # The cross decoder's programs are not what is under test (its compile is a fifth of each
    # stage's), and the PyTorch stage follows the config without it.
    "--set=model.cross_decoder.enabled=False",
    "--set=loss.cross_decoder=0.0",
    "--steps=1",
    "--warmup=0",
    "--vocab_size=1000",  # above the tiny built-in data's ~320 words: one program for both inputs
    "--data_recipes=120",
    "--data_px=48",
    "--input_batch=8",
    "--input_batches=2",
    "--rank_n=300",
    "--skip=torch_compile",  # minutes of inductor compilation on 2 cores; run on the GPU
    "--budget_s=7200",
    "--stage_limit_s=900",  # a loaded 2-core CI machine, not an H100
]
# Stages that cannot run on this CPU, and the words their reason must contain.
CANNOT_RUN_HERE = {
    "cudnn_attention": "CUDA GPU",  # the baseline's `auto` is XLA here: on is cuDNN
    "max_batch": "device memory",  # CPU devices report no peak nor limit
    "torch_compile": "--skip",
}
# Each switch stage's config, as its bench_train JSON records it: the tiny baseline flipped.
FLIPPED = {
    "device_prefetch": {"data.prefetch": 0},  # the tiny preset prefetches 2: off
    "fsdp": {"train.fsdp": True},
}
# The plan in two runs, which the test workers run side by side; the second is the rerun's form
# (--only). device_prefetch goes with the pipeline-fed step it compares with (and whose compiled
# program it reuses). Every switch stage runs one code path (bench_train on the flipped config,
# 30 s of a loaded CI core each), so the run takes the sharding flip (the state laid out anew)
# and one the CPU refuses; every switch's flip is checked without running it
# (test_switches_flip_the_baseline_one_field_at_a_time).
SWITCH_RUN = ["cudnn_attention", "fsdp"]
NOT_RUN = [
    "bf16",
    "grad_accum",
    "packed_text",
    "bf16_adam_mu",
    "remat_dots",
    "remat_full",
    "adversarial",
]
TARGET_RUN = [n for n, _ in gpu_check.PLAN if n not in SWITCH_RUN + NOT_RUN]


def field(config: dict, name: str):
    for part in name.split("."):
        config = config[part]
    return config


def run_check(tmp_path, only: list[str]) -> tuple[dict, str]:
    """gpu_check at tiny size on 2 CPU devices, `--only` these stages: (rows by stage, table).
    Checks what every run must give: the three files, every stage of the plan reported, those
    that cannot run here skipped by name with the reason, the others ok, and each run's JSON and
    log in the archive."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # Two devices, so that the FSDP stage shards; unoptimised code compiles ~2x faster.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
        "OUT": str(out),
    }
    cmd = [sys.executable, "tools/gpu_check.py", *TINY, f"--cache_dir={tmp_path / 'cache'}"]
    cmd.append(f"--only={','.join(only)}")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.md", "runs.tar.gz"]
    rows = {r["stage"]: r for r in json.loads((out / "gpu_check.json").read_text())["stages"]}
    assert list(rows) == ["env", *(name for name, _ in gpu_check.PLAN)]
    status = {name: r["status"] for name, r in rows.items()}
    cannot = {n: words for n, words in CANNOT_RUN_HERE.items() if n in only}
    if importlib.util.find_spec("torch") is None and "torch_eager" in only:
        cannot["torch_eager"] = "torch is not installed"
    env_facts = rows["env"]["result"]
    if not env_facts["cuda_plugin"] and "lower" in only:  # lowering needs the plugin, not a GPU
        cannot["lower"] = "no CUDA plugin"
    for name, words in cannot.items():
        assert status[name] == "skipped" and words in rows[name]["reason"], rows[name]
    for name in set(rows) - {"env", *only}:
        assert status[name] == "skipped" and rows[name]["reason"] == "not in --only"
    assert {n for n in ["env", *only] if status[n] != "ok"} == set(cannot)
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    for name, s in status.items():
        if s == "ok" and name != "env":  # each run's own JSON and log travel in the archive
            assert {f"runs/{name}.json", f"runs/{name}.log"} <= names
    table = (out / "gpu_check.md").read_text()
    for name in rows:
        assert f"| {name} | {status[name]} |" in table
    return rows, table


def result(rows: dict, name: str) -> dict:
    (res,) = rows[name]["result"]["results"]
    return res


def test_gpu_check_runs_the_target_stages_at_tiny_size_on_cpu(tmp_path):
    rows, table = run_check(tmp_path, TARGET_RUN)
    # The software versions, and the baseline's values the switches read.
    env_facts = rows["env"]["result"]
    assert env_facts["versions"]["jax"] and env_facts["versions"]["flax"]
    assert env_facts["devices"] == 2 and env_facts["config"]["model.attention"] == "xla"
    train = result(rows, "train")
    assert train["examples_per_sec"] > 0 and train["fits"]
    assert train["peak_memory_bytes"] is None  # CPU keeps no statistics: said, not invented
    assert train["planned_memory_bytes"] > train["state_bytes"] > 0  # XLA's plan holds the state
    # The pipeline-fed step is the synthetic step's program, served by the compilation cache.
    pipeline = result(rows, "train_pipeline")
    assert pipeline["compile_cache_hit"] and not train["compile_cache_hit"]
    assert pipeline["examples_per_sec"] > 0
    assert pipeline["host_pipeline_examples_per_sec_per_process"] > 0
    assert rows["train_pipeline"]["result"]["mode"] == "pipeline"
    prefetch = rows["device_prefetch"]
    assert prefetch["result"]["mode"] == "pipeline" and prefetch["switch"].startswith("off")
    assert field(prefetch["result"]["config_full"], "data.prefetch") == 0
    assert result(rows, "device_prefetch")["compile_cache_hit"]  # prefetch is not in the program
    embed = result(rows, "embed")
    assert embed["examples_per_sec"] > 0 and embed["device_examples_per_sec"] > 0
    assert embed["examples"] % embed["batch_size"] == 0 and embed["split"] == "train"
    assert rows["rank"]["result"]["n"] == 300
    assert [r["workers"] for r in rows["input"]["result"]["rows"]] == [1]
    if rows["torch_eager"]["status"] == "ok":
        assert result(rows, "torch_eager")["examples_per_sec"] > 0
    assert "peak memory not available here" in table
    assert "- MFU >= 45%: not measured" in table  # no published CPU peak: no made-up number
    assert "- pipeline-fed step within 5% of synthetic: " in table


def test_gpu_check_runs_the_switch_stages_at_tiny_size_on_cpu(tmp_path):
    """Each switch is the baseline with that switch alone flipped (as --only runs a rerun)."""
    rows, table = run_check(tmp_path, SWITCH_RUN)
    baseline = rows["env"]["result"]["config"]
    for name in set(SWITCH_RUN) - set(CANNOT_RUN_HERE):
        values = FLIPPED[name]
        assert result(rows, name)["examples_per_sec"] > 0, name
        for key, value in values.items():
            assert field(rows[name]["result"]["config_full"], key) == value != baseline[key]
        assert rows[name]["switch"].startswith("on"), rows[name]["switch"]
    assert "- speed switches measured on and off: fsdp" in table


def test_the_must_run_stages_come_first_and_fit_eight_minutes(capsys):
    names = [name for name, _ in gpu_check.PLAN]
    limits = dict(gpu_check.PLAN)
    must = list(gpu_check.MUST_RUN)
    assert names[: len(must)] == must  # ranked first
    assert gpu_check.STARTUP_S + sum(limits[n] for n in must) <= 480 == gpu_check.BUDGET_S
    # The plan as --list prints it: each stage's limit and the running sum.
    assert gpu_check.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    sums = {line.split()[0]: int(line.split()[-2 if "yes" in line else -1]) for line in lines}
    assert sums[must[-1]] == gpu_check.STARTUP_S + sum(limits[n] for n in must) <= 480
    assert sums[names[-1]] == gpu_check.STARTUP_S + sum(limits.values())
    assert all(("yes" in line) == (line.split()[0] in [*must, "env"]) for line in lines)
    with pytest.raises(SystemExit):  # a stage the plan does not have is a usage error
        gpu_check.parse_args(["--only=trian"])


def test_switches_flip_the_baseline_one_field_at_a_time():
    b16 = {  # configs/tnlbt.py:b16's values, attention resolved on a GPU
        "model.attention": "cudnn",
        "model.dtype": "bfloat16",
        "model.remat": "none",
        "model.text.packed_ingredient_tokens": 0,
        "model.text.packed_instruction_tokens": 0,
        "data.max_ingredients": 20,
        "data.max_ingredient_tokens": 15,
        "data.max_instructions": 20,
        "data.max_instruction_tokens": 15,
        "data.prefetch": 2,
        "train.batch_size": 768,
        "train.grad_accum_steps": 1,
        "train.grad_accum": "gradcache",
        "train.mu_dtype": "",
        "train.fsdp": False,
    }
    flips = {n: gpu_check.flipped(s, b16) for n, s in gpu_check.switches(b16).items()}
    assert flips["cudnn_attention"] == (True, {"model.attention": "xla"})
    assert flips["bf16"] == (True, {"model.dtype": "float32"})
    assert flips["device_prefetch"] == (True, {"data.prefetch": 0})
    assert flips["remat_dots"] == (False, {"model.remat": "dots"})
    assert flips["remat_full"] == (False, {"model.remat": "full"})
    assert flips["bf16_adam_mu"] == (False, {"train.mu_dtype": "bfloat16"})
    assert flips["fsdp"] == (False, {"train.fsdp": True})
    # b16's adversarial network is off (a flag): the stage switches ACME's parts on.
    assert flips["adversarial"] == (False, common.ACME_ADVERSARIAL)
    assert gpu_check.ACME_ADVERSARIAL == common.ACME_ADVERSARIAL
    assert flips["packed_text"][1] == {
        "model.text.packed_ingredient_tokens": 152,  # half of 300, rounded up to 8
        "model.text.packed_instruction_tokens": 152,
    }
    assert flips["grad_accum"] == (
        False,
        {"train.grad_accum_steps": 4, "train.grad_accum": "gradcache"},
    )
    assert set(flips) == {*SWITCH_RUN, *NOT_RUN, "device_prefetch"}
    assert set(flips) | set(gpu_check.MUST_RUN) <= {n for n, _ in gpu_check.PLAN}
    # The first-run preset packs its lines (56 / 88 tokens): packing is on there, so off flips it.
    first_run = {
        **b16,
        "model.text.packed_ingredient_tokens": 56,
        "model.text.packed_instruction_tokens": 88,
    }
    packed = gpu_check.switches(first_run)["packed_text"]
    assert gpu_check.flipped(packed, first_run)[0]


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_that_fails_times_out_or_does_not_fit_is_reported(tmp_path):
    runs, env = str(tmp_path), dict(os.environ)
    late = time.monotonic() + 60
    failing = gpu_check.Stage("bad", 30, [sys.executable, "-c", "raise SystemExit('no cuDNN')"])
    row = gpu_check.run_stage(failing, late, env, runs)
    assert row["status"] == "failed (exit 1)" and "no cuDNN" in row["log_tail"]
    assert "no cuDNN" in gpu_check.summary(row)  # the table shows why it failed
    # At its limit the stage's whole process group goes, its children too (Grain workers).
    child = tmp_path / "child.pid"
    spawn = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    slow = gpu_check.Stage("slow", 3, [sys.executable, "-c", spawn])
    assert gpu_check.run_stage(slow, late, env, runs)["status"] == "timeout (3 s)"
    pid = int(child.read_text())
    for _ in range(50):  # SIGKILL is delivered asynchronously
        if not alive(pid):
            break
        time.sleep(0.1)
    assert not alive(pid)
    # A stage whose whole limit no longer fits is not started; a shorter one after it still is.
    soon = time.monotonic() + 10
    long = gpu_check.Stage("long", 30, [sys.executable, "-c", "pass"])
    short = gpu_check.Stage("short", 5, [sys.executable, "-c", "pass"])
    spent = gpu_check.run_stage(long, soon, env, runs)
    assert spent["status"] == "not run" and "needs 30 s" in spent["reason"]
    assert gpu_check.run_stage(short, soon, env, runs)["status"] == "ok"
    # A stage whose command depends on an earlier one says why it has none.
    lazy = gpu_check.Stage("lazy", 5, lambda rows: "no estimate: train did not run")
    assert gpu_check.run_stage(lazy, soon, env, runs)["reason"].startswith("no estimate")


def test_the_exit_status_is_not_zero_when_anything_was_left_out():
    rows = [{"status": "ok"}, {"status": "skipped"}]
    assert gpu_check.exit_status(rows) == 0
    assert gpu_check.exit_status([*rows, {"status": "not run"}]) == 1
    assert gpu_check.exit_status([*rows, {"status": "timeout (2 s)"}]) == 1
