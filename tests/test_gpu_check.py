"""tools/gpu_check.py, the one script run on a lent GPU, runs here on CPU at tiny size: every
stage runs or says why not, and what comes back is three files (the device tool brings back at
most eight). A subprocess: the script is a command line, run as the GPU machine runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import gpu_check  # noqa: E402

TINY = [
    "--config=configs/tnlbt.py:tiny",
    "--set=model.vit.depth=1",
    "--set=data.max_ingredients=3",
    "--set=data.max_instructions=3",
    "--steps=2",
    "--warmup=1",
    "--vocab_size=50",
    "--workers=2",
    "--pipeline_recipes=40",
    "--rank_n=300",
    "--skip=torch_compile",  # minutes of inductor compilation on 2 cores; run on the GPU
    "--budget_s=1500",
    "--stage_cap_s=900",  # a loaded 2-core CI machine, not an H100
]


def test_gpu_check_runs_every_stage_at_tiny_size_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(out)}
    proc = subprocess.run(
        [sys.executable, "tools/gpu_check.py", *TINY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.md", "runs.tar.gz"]
    rows = {r["stage"]: r for r in json.loads((out / "gpu_check.json").read_text())["stages"]}
    expected = {"env", "lower", "rank", "torch_eager", "torch_compile", "pipeline"}
    expected |= {f"jax_{a}_{r}" for a in ("cudnn", "xla") for r in ("none", "dots")}
    assert set(rows) == expected
    status = {name: r["status"] for name, r in rows.items()}
    # No GPU here: the cuDNN benchmarks say so; XLA attention runs with and without remat.
    for remat in ("none", "dots"):
        assert status[f"jax_cudnn_{remat}"] == "skipped"
        assert "CUDA GPU" in rows[f"jax_cudnn_{remat}"]["reason"]
        (res,) = rows[f"jax_xla_{remat}"]["result"]["results"]
        assert res["examples_per_sec"] > 0
        assert rows[f"jax_xla_{remat}"]["result"]["remat"] == remat
        assert rows[f"jax_xla_{remat}"]["result"]["dtype"] == "bfloat16"
    assert status["rank"] == "ok" and rows["rank"]["result"]["n"] == 300
    assert status["pipeline"] == "ok"
    assert [r["workers"] for r in rows["pipeline"]["result"]["rows"]] == [2]
    assert rows["torch_compile"]["reason"] == "--skip"
    if importlib.util.find_spec("torch") is not None:
        (res,) = rows["torch_eager"]["result"]["results"]
        assert res["examples_per_sec"] > 0
    else:
        assert rows["torch_eager"]["reason"] == "torch is not installed"
    if rows["env"]["result"]["cuda_plugin"]:  # lowering for CUDA needs the plugin, not a GPU
        assert status["lower"] == "ok" and rows["lower"]["result"]["train_step"]["ok"]
    else:
        assert status["lower"] == "skipped"
    table = (out / "gpu_check.md").read_text()
    for name in expected:
        assert f"| {name} | {status[name]} |" in table
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    for name, s in status.items():
        if s == "ok" and name != "env":  # each run's own JSON and log travel in the archive
            assert {f"runs/{name}.json", f"runs/{name}.log"} <= names


def test_a_stage_that_fails_times_out_or_does_not_fit_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STAGE_S", 1)
    runs, env = str(tmp_path), dict(os.environ)
    late = time.monotonic() + 60
    failing = gpu_check.Stage("bad", [sys.executable, "-c", "raise SystemExit('no cuDNN')"], 30)
    row = gpu_check.run_stage(failing, late, env, runs)
    assert row["status"] == "failed (exit 1)" and "no cuDNN" in row["log_tail"]
    slow = gpu_check.Stage("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 2)
    assert gpu_check.run_stage(slow, late, env, runs)["status"] == "timeout (2 s)"
    spent = gpu_check.run_stage(slow, time.monotonic(), env, runs)
    assert spent["status"] == "not run" and "budget" in spent["reason"]
    assert "no cuDNN" in gpu_check.summary(row)  # the table shows why it failed


def test_the_exit_status_is_not_zero_when_anything_was_left_out():
    rows = [{"status": "ok"}, {"status": "skipped"}]
    assert gpu_check.exit_status(rows) == 0
    assert gpu_check.exit_status([*rows, {"status": "not run"}]) == 1
    assert gpu_check.exit_status([*rows, {"status": "timeout (2 s)"}]) == 1
