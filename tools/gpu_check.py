"""Every GPU measurement the project needs, in one call of at most 8 minutes on one H100/H200.

    bash tools/gpu_wheels.sh                     # here, once: the packages the GPU image lacks
    python3 tools/gpu_check.py --wheels=.whl     # there (the device tool: carry=[".whl"])
        [--out=DIR] [--budget_s=480] [--config=configs/tnlbt.py:b16] [--set=a.b=v ...]
        [--steps=10] [--warmup=2] [--workers=16] [--skip=stage,...]

Stages, most important first, each a subprocess of the project's own tools with its own time
limit cut to what is left of `--budget_s` (what no longer fits is reported "not run"):
  env             devices and versions (and whether torch is there)
  lower           tools/lower_for_gpu.py: train / eval / decode lowered with cuDNN attention
  rank            tools/bench_ranking.py: the protocol's 10k x 10k ranking on the device
  jax_<attn>_<remat>  tools/bench_train.py, synthetic, bf16: attention cudnn | xla, remat none
                  | dots (compiles the full step: the cuDNN check of `lower`, compiled)
  torch_eager, torch_compile   tools/bench_torch.py, bf16 AMP: the same model and objective,
                  eager and with the whole step in torch.compile
  pipeline        tools/bench_input.py: the Grain pipeline at b16's resolution with N workers
Without a GPU the cuDNN stages are skipped with the reason (tests run this at tiny size on CPU).

Writes under `--out` ($OUT when set, else ./gpu_check_out): gpu_check.md (one table),
gpu_check.json (every stage: command, status, seconds, its own JSON) and runs.tar.gz (each
stage's JSON and full log) — three files, inside the device tool's limit on files brought back.
Exits 1 when a stage failed, timed out or did not fit the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_STAGE_S = 20  # a stage that cannot get this long is not started
ENV_PROBE = """
import importlib.util, json, platform, jax
from xmodal.data.pipeline import usable_cores
def version(name):
    try:
        from importlib.metadata import version as v
        return v(name)
    except Exception:
        return None
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
d = jax.devices()[0]
print(json.dumps({
    "cuda_plugin": has("jax_plugins.xla_cuda12") or has("jax_plugins.xla_cuda13"),
    "backend": jax.default_backend(), "device_kind": d.device_kind, "devices": jax.device_count(),
    "python": platform.python_version(), "cpus": usable_cores(),
    "torch": has("torch"),
    "versions": {n: version(n) for n in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                 "grain", "array-record", "ml-collections", "numpy", "torch")},
}))
"""


@dataclasses.dataclass
class Stage:
    name: str
    command: list[str]
    cap_s: int
    skip: str | None = None  # reason it is not run here


def stage_json(runs: str, name: str) -> str:
    """Where stage `name`'s tool is told to write its JSON."""
    return os.path.join(runs, f"{name}.json")


def stages(args: argparse.Namespace, env: dict[str, Any], runs: str) -> list[Stage]:
    """The stages in order, each with its command and cap; cuDNN and torch ones skipped where
    their hardware or package is missing."""
    py = sys.executable
    overrides = [f"--config.{kv}" for kv in args.set]
    out = lambda name: stage_json(runs, name)
    gpu = env.get("backend") == "gpu"
    no_torch = None if env.get("torch") else "torch is not installed"
    result = [
        Stage(
            "lower",
            [
                py,
                "tools/lower_for_gpu.py",
                f"--config={args.config}",
                *overrides,
                f"--out={out('lower')}",
            ],
            120,
            None if gpu or env.get("cuda_plugin") else "no CUDA plugin to lower with",
        ),
        Stage(
            "rank",
            [py, "tools/bench_ranking.py", f"--n={args.rank_n}", f"--out={out('rank')}"],
            60,
        ),
    ]

    def jax_bench(attention: str, remat: str) -> Stage:
        name = f"jax_{attention}_{remat}"
        cmd = [
            py,
            "tools/bench_train.py",
            f"--config={args.config}",
            *overrides,
            "--config.model.dtype=bfloat16",
            f"--config.model.attention={attention}",
            f"--config.model.remat={remat}",
            f"--steps={args.steps}",
            f"--warmup={args.warmup}",
            f"--vocab_size={args.vocab_size}",
            f"--out={out(name)}",
        ]
        skip = None if gpu or attention != "cudnn" else "cuDNN attention needs a CUDA GPU"
        return Stage(name, cmd, 150, skip)

    def torch_bench(compiled: bool) -> Stage:
        name = "torch_compile" if compiled else "torch_eager"
        cmd = [
            py,
            "tools/bench_torch.py",
            f"--config={args.config}",
            *overrides,
            f"--amp={'bf16' if gpu else 'none'}",
            f"--steps={args.steps}",
            f"--warmup={args.warmup}",
            f"--vocab_size={args.vocab_size}",
            f"--out={out(name)}",
            *(["--compile"] if compiled else []),
        ]
        return Stage(name, cmd, 240 if compiled else 120, no_torch)

    pipeline = Stage(
        "pipeline",
        [
            py,
            "tools/bench_input.py",
            f"--workers={args.workers}",
            f"--batch_size={args.batch}",
            f"--num_batches={args.steps}",
            f"--num_recipes={args.pipeline_recipes}",
            f"--json={out('pipeline')}",
        ],
        150,
    )
    result += [jax_bench("cudnn", "none"), jax_bench("xla", "none")]
    result += [torch_bench(False), torch_bench(True), pipeline]
    result += [jax_bench("cudnn", "dots"), jax_bench("xla", "dots")]
    for s in result:
        if s.name in args.skip:
            s.skip = "--skip"
        s.cap_s = args.stage_cap_s or s.cap_s
    return result


def run_stage(stage: Stage, deadline: float, env: dict[str, str], runs: str) -> dict[str, Any]:
    """Run one stage in a subprocess with its log under `runs`; its JSON read back if written."""
    row: dict[str, Any] = {"stage": stage.name, "command": " ".join(stage.command)}
    if stage.skip:
        return {**row, "status": "skipped", "reason": stage.skip}
    limit = min(stage.cap_s, int(deadline - time.monotonic()))
    if limit < MIN_STAGE_S:
        return {**row, "status": "not run", "reason": "the budget is spent"}
    log = os.path.join(runs, f"{stage.name}.log")
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(
                stage.command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=limit
            )
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({limit} s)"
    row.update(status=status, seconds=round(time.monotonic() - start, 1))
    written = stage_json(runs, stage.name)  # each stage's tool writes its JSON there
    if os.path.exists(written):
        with open(written) as f:
            row["result"] = json.load(f)
    if status != "ok":
        with open(log) as f:
            row["log_tail"] = f.read()[-2000:]
    return row


def summary(row: dict[str, Any]) -> str:
    """The numbers that matter of one stage's JSON, in a few words."""
    r = row.get("result")
    if not r:
        return row.get("reason", "") or (row.get("log_tail", "").strip().splitlines() or [""])[-1]
    name = row["stage"]
    if name == "env":
        return f"{r['device_kind']} ({r['backend']}), torch {'yes' if r['torch'] else 'no'}"
    if name == "lower":
        parts = []
        for prog in ("train_step", "eval_embed", "decode"):
            if prog in r:
                p = r[prog]
                calls = p.get("cudnn_attention_calls", "-")
                parts.append(f"{prog} {'ok' if p.get('ok') else 'FAILED'} ({calls} cuDNN)")
        return ", ".join(parts)
    if name == "rank":
        return f"{1e3 * r['call_s_median']:.1f} ms per {r['n']} x {r['n']} ranking"
    if name == "pipeline":
        return ", ".join(
            f"{x['workers']} workers: {x['images_per_s']:.0f} images/s" for x in r["rows"]
        )
    (res,) = r["results"]
    mfu = res.get("mfu")
    mem = res.get("peak_memory_bytes")
    text = (
        f"{res['examples_per_sec']:.1f} examples/s, step {1e3 * res['step_s_median']:.0f} ms"
        f", MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
        f", peak {'n/a' if mem is None else f'{mem / 2**30:.1f} GiB'}"
    )
    if "compile_s" in res:
        text += f", compile {res['compile_s']:.0f} s"
    if "first_step_s" in res:
        text += f", first step {res['first_step_s']:.0f} s"
    return text


def markdown(env: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    lines = [
        f"# gpu_check: {args.config} {' '.join(args.set)}".rstrip(),
        "",
        f"{env.get('device_kind', '?')} x {env.get('devices', '?')} ({env.get('backend', '?')}),"
        f" {env.get('cpus', '?')} cores, Python {env.get('python', '?')}; {versions}",
        "",
        "| stage | status | s | numbers |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        cell = summary(r).replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['stage']} | {r['status']} | {r.get('seconds', '')} | {cell} |")
    return "\n".join(lines) + "\n"


def install_wheels(wheels: str) -> str | None:
    """pip-install the carried wheels into a private folder (nothing is reachable there);
    returns the folder to put on PYTHONPATH, or None without wheels."""
    files = sorted(glob.glob(os.path.join(wheels, "*.whl"))) if wheels else []
    if not files:
        return None
    target = os.path.join(tempfile.gettempdir(), "xmodal-gpu-check-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            target,
            *files,
        ],
        check=True,
    )
    return target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--budget_s", type=int, default=480, help="the whole check, install included")
    p.add_argument("--config", default="configs/tnlbt.py:b16")
    p.add_argument("--set", action="append", default=[], help="a.b=v: a config override")
    p.add_argument("--steps", type=int, default=10, help="measured steps (and pipeline batches)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vocab_size", type=int, default=16384)
    p.add_argument("--workers", default="16", help="Grain worker counts, comma-separated")
    p.add_argument("--batch", type=int, default=64, help="per-process batch of the pipeline stage")
    p.add_argument("--pipeline_recipes", type=int, default=1000)
    p.add_argument("--rank_n", type=int, default=10_000)
    p.add_argument("--wheels", default="", help="folder of wheels to install first (.whl)")
    p.add_argument("--skip", default="", help="comma-separated stage names not to run")
    p.add_argument("--stage_cap_s", type=int, default=0, help="every stage's limit (0: its own)")
    args = p.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    runs = tempfile.mkdtemp(prefix="gpu_check-")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    site = install_wheels(args.wheels)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, site, env.get("PYTHONPATH")) if p)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", ENV_PROBE],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(MIN_STAGE_S, int(deadline - time.monotonic())),
        )
    except subprocess.TimeoutExpired as e:
        probe = subprocess.CompletedProcess(e.cmd, 1, "", "the environment probe timed out")
    facts: dict[str, Any] = {}
    if probe.returncode == 0:
        facts = json.loads(probe.stdout.strip().splitlines()[-1])
    env_row = {"stage": "env", "status": "ok" if probe.returncode == 0 else "failed"}
    rows = [{**env_row, "result": facts, "log_tail": probe.stderr[-2000:]}]
    for stage in stages(args, facts, runs) if facts else []:
        row = run_stage(stage, deadline, env, runs)
        rows.append(row)
        print(f"{row['stage']:<16} {row['status']:<18} {row.get('seconds', '')}", flush=True)
    table = markdown(facts, rows, args)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({"args": vars(args) | {"skip": sorted(args.skip)}, "stages": rows}, f, indent=2)
    with tarfile.open(os.path.join(args.out, "runs.tar.gz"), "w:gz") as tar:
        tar.add(runs, arcname="runs")
    shutil.rmtree(runs, ignore_errors=True)
    print(table)
    return exit_status(rows)


def exit_status(rows: list[dict[str, Any]]) -> int:
    """0 when every stage ran or was skipped for a stated reason; 1 when one failed, timed out
    or did not fit the budget."""
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
