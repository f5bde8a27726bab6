"""Every measurement the GPU issue asks for, ranked, in one call of at most 8 minutes on one
H100/H200.

    bash tools/gpu_wheels.sh                     # here, once: the packages the GPU image lacks
    python3 tools/gpu_check.py --list            # the plan: each stage's limit, the running sum
    python3 tools/gpu_check.py --wheels=.whl     # there (the device tool: carry=[".whl"])
        [--out=DIR] [--budget_s=480] [--config=configs/tnlbt.py:b16] [--set=a.b=v ...]
        [--steps=10] [--warmup=2] [--only=stage,...] [--skip=stage,...] [--cache_dir=DIR]
    python3 tools/gpu_check.py --wheels=.whl --budget_s=S --only=STAGES [--max_batch=N]
                                                 # the shorter rerun: what failed or did not run

Stages in priority order, with their limits in `PLAN` (`--list` prints them and the running
sum). Start-up (35 s) and the first five stages' limits sum to 480 s, so they always run: they
decide the issue's headline targets (MFU, whether input keeps up, the ratio to PyTorch eager)
or cost little (the ranking, eval). The rest follow by what they tell per second of device
time: torch.compile's ratio is a named target but its compilation takes minutes; then the speed
switches, the likeliest to move the step first (cuDNN attention, remat, device prefetch, which
costs no compilation) and those that mainly save memory later; the largest batch; the input's
per-core costs; lowering (already checked on CPU with the CUDA plugin) last.
  env (start-up)  the software versions: jax, jaxlib, the CUDA plugin and the CUDA libraries it
                  loaded (cuDNN...), flax, optax, orbax, grain, torch, the driver (nvidia-smi);
                  devices, cores, and the baseline config's values the switches read
  train           the baseline, the config as it is (b16: bf16, attention auto = cuDNN, batch
                  768), synthetic input: examples/s, MFU, peak memory, XLA's memory plan, the
                  largest batch estimated to fit
  train_pipeline  the same step fed by the Grain pipeline and device prefetcher on the built-in
                  data (--data_recipes photos drawn at --data_px, stored at short side 256 as
                  prepare stores Recipe1M, read at 224; built first, inside the limit), with the
                  same vocabulary: the same program, served by the compilation cache; the host
                  pipeline's rate alone beside it
  torch_eager     the PyTorch reference, eager, bf16 autocast, fused attention
  rank            the protocol's 10k x 10k ranking on the device
  embed           eval embedding throughput: the embed loop over the built-in train split in
                  whole eval batches, and its compiled embed step alone
  torch_compile   the PyTorch reference's whole step in torch.compile
  <switch>        one speed switch flipped from the baseline (on -> off, or off -> on), all else
                  equal: cudnn_attention, remat_dots, device_prefetch (pipeline-fed), bf16,
                  grad_accum (4 micro-batches, GradCache), packed_text (half the padded tokens),
                  bf16_adam_mu, remat_full, fsdp; a step that does not fit says so (XLA's plan
                  against the device's memory, or the allocation that failed)
  adversarial     TNLBT's adversarial network (ACME's critic, generator, image discriminator and
                  heads at the preset's sizes: 128 px for b16) switched on: its cost per step
  max_batch       the baseline at the largest batch `train` estimated to fit, run to check it
  input           tools/bench_input.py on the same data: images/s with one worker and with
                  every core but two, per core, and the per-image costs (the cause, if the
                  pipeline-fed step lags)
  lower           tools/lower_for_gpu.py: the programs lowered with cuDNN attention, counted
Each stage is a subprocess of the project's own tools, its process group killed at its limit.
It starts only when its whole limit fits what is left of `--budget_s`, else it is reported "not
run" (a later, shorter one may still start). Every stage reports peak device memory, "not
available" where the backend keeps no statistics (CPU). Stages that need CUDA (cuDNN attention
where the baseline lacks it, lowering without the CUDA plugin, the largest batch without a
device memory limit) or several devices (FSDP) are skipped with the reason; tests run the rest
at tiny size on CPU.

Compiled programs are shared by the stages through JAX's persistent cache, and the built-in data
by the data stages, both under `--cache_dir`, which a rerun on the same machine reuses. JAX may
take 95% of the GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION, unless set; its default is 75%).
Writes under `--out` ($OUT when set, else ./gpu_check_out): gpu_check.md (the targets reached
or missed, then one table), gpu_check.json (every stage: command, status, seconds, limit, its own
JSON) and runs.tar.gz (each stage's JSON and full log): three files, inside the device tool's
limit on files brought back. Exits 1 when a stage failed, timed out or was not run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 480  # the GPU issue's 8 minutes for the whole check
STARTUP_S = 35  # installing the wheels and the environment probe (the env stage)

# (stage, limit in seconds) in priority order. The must-run stages come first, and their limits
# plus STARTUP_S fit BUDGET_S (tests/test_gpu_check.py checks it); the others run while time is
# left.
PLAN: list[tuple[str, int]] = [
    ("train", 180),
    ("train_pipeline", 105),
    ("torch_eager", 65),
    ("rank", 25),
    ("embed", 70),
    ("torch_compile", 240),
    ("cudnn_attention", 150),
    ("remat_dots", 150),
    ("device_prefetch", 60),
    ("max_batch", 150),
    ("bf16", 150),
    ("grad_accum", 170),
    ("packed_text", 150),
    ("bf16_adam_mu", 150),
    ("remat_full", 150),
    ("fsdp", 150),
    ("adversarial", 180),
    ("input", 60),
    ("lower", 120),
]
MUST_RUN = ("train", "train_pipeline", "torch_eager", "rank", "embed")


# configs/common.py's ACME_ADVERSARIAL, spelled out: this driver imports no project code (the
# stages do), so it runs on a bare GPU image (tests/test_gpu_check.py keeps the two equal).
ACME_ADVERSARIAL = {
    "adversarial.enabled": True,
    "adversarial.align": 0.005,
    "adversarial.translate": 0.002,
    "adversarial.gradient_penalty": 10.0,
    "adversarial.kl": 2.0,
}


@dataclasses.dataclass(frozen=True)
class Switch:
    """A speed switch: the config values with it on, and with it off. The stage measures the
    baseline with the switch flipped: off where the baseline has it on, on where it is off."""

    on: dict[str, Any]
    off: dict[str, Any]
    mode: str = "synthetic"  # the baseline it is compared with: train's (synthetic) or pipeline's
    needs_gpu: bool = False  # "on" runs only on a CUDA GPU
    # Whether a config has it on (default: it has every `on` value), e.g. any packed budget.
    is_on: Callable[[dict[str, Any]], bool] | None = None


def switches(config: dict[str, Any]) -> dict[str, Switch]:
    """The project's speed switches (docs/performance.md, "What the trainer does for speed"),
    with values taken from the baseline `config` (flat field -> value) where they depend on it."""

    def half_padded(lines: str, tokens: str) -> int:  # a packed budget: half the padded tokens
        return 8 * math.ceil(config[lines] * config[tokens] / 16)

    packed = {
        "model.text.packed_ingredient_tokens": half_padded(
            "data.max_ingredients", "data.max_ingredient_tokens"
        ),
        "model.text.packed_instruction_tokens": half_padded(
            "data.max_instructions", "data.max_instruction_tokens"
        ),
    }
    return {
        "cudnn_attention": Switch(
            {"model.attention": "cudnn"}, {"model.attention": "xla"}, needs_gpu=True
        ),
        "remat_dots": Switch({"model.remat": "dots"}, {"model.remat": "none"}),
        "device_prefetch": Switch(
            {"data.prefetch": 2},
            {"data.prefetch": 0},
            mode="pipeline",
            is_on=lambda c: c["data.prefetch"] > 0,
        ),
        "bf16": Switch({"model.dtype": "bfloat16"}, {"model.dtype": "float32"}),
        "grad_accum": Switch(
            {"train.grad_accum_steps": 4, "train.grad_accum": "gradcache"},
            {"train.grad_accum_steps": 1},
            is_on=lambda c: c["train.grad_accum_steps"] > 1,
        ),
        "packed_text": Switch(
            packed,
            {"model.text.packed_ingredient_tokens": 0, "model.text.packed_instruction_tokens": 0},
            is_on=lambda c: any(c[k] for k in packed),
        ),
        "bf16_adam_mu": Switch({"train.mu_dtype": "bfloat16"}, {"train.mu_dtype": ""}),
        "remat_full": Switch({"model.remat": "full"}, {"model.remat": "none"}),
        "fsdp": Switch({"train.fsdp": True}, {"train.fsdp": False}),
        # Not a speed switch but TNLBT's adversarial network (ACME's parts at its weights; the
        # preset's network sizes): what it costs per step, measured like one, last.
        "adversarial": Switch(
            dict(ACME_ADVERSARIAL),
            {"adversarial.enabled": False},
            is_on=lambda c: bool(c.get("adversarial.enabled")),
        ),
    }


def flipped(switch: Switch, config: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(whether the baseline has the switch on, the overrides that flip it)."""
    if switch.is_on:
        on = switch.is_on(config)
    else:
        on = all(config.get(k) == v for k, v in switch.on.items())
    return on, switch.off if on else switch.on


@dataclasses.dataclass
class Stage:
    name: str
    limit_s: int
    # The command, or a reason not to run it; a callable gets the rows of the stages run so far.
    command: list[str] | Callable[[dict[str, dict[str, Any]]], list[str] | str]
    skip: str | None = None
    switch: str | None = None  # a switch stage: which way it flips the baseline, and to what


def stage_json(runs: str, name: str) -> str:
    """Where stage `name`'s tool is told to write its JSON."""
    return os.path.join(runs, f"{name}.json")


def stages(args: argparse.Namespace, env: dict[str, Any], runs: str) -> list[Stage]:
    """The plan's stages in order with their commands (a callable where the command depends on
    an earlier stage's result), each skipped where its hardware or package is missing or where
    `--only`/`--skip` leave it out."""
    py = sys.executable
    config = env["config"]
    overrides = [f"--config.{kv}" for kv in args.set]
    out = lambda name: f"--out={stage_json(runs, name)}"
    gpu = env["backend"] == "gpu"
    data = [
        f"--config.data.synthetic.num_recipes={args.data_recipes}",
        f"--config.data.synthetic.image_size={args.data_px}",
        f"--config.data.cache_dir={os.path.join(args.cache_dir, 'data')}",
    ]

    def bench_train(name: str, mode: str, *extra: str) -> list[str]:
        cmd = [py, "tools/bench_train.py", f"--config={args.config}", *overrides, *extra]
        cmd += [f"--mode={mode}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
        cmd += [f"--vocab_size={args.vocab_size}", out(name)]
        return cmd + (data if mode != "synthetic" else [])

    def torch_bench(name: str, compiled: bool) -> list[str]:
        cmd = [py, "tools/bench_torch.py", f"--config={args.config}", *overrides]
        cmd += [f"--amp={'bf16' if gpu else 'none'}", f"--steps={args.steps}"]
        cmd += [f"--warmup={args.warmup}", f"--vocab_size={args.vocab_size}", out(name)]
        return cmd + (["--compile"] if compiled else [])

    def max_batch(rows: dict[str, dict[str, Any]]) -> list[str] | str:
        res = first_result(rows.get("train"))
        estimate = args.max_batch or (res or {}).get("largest_batch_estimate")
        if not estimate:
            return "no estimate: `train` measured no device memory peak and limit"
        step = 64 * env["devices"]  # a round batch that splits over the devices
        batch = estimate // step * step
        if batch <= config["train.batch_size"]:
            return f"the baseline's batch is the largest that fits (estimate {estimate})"
        return bench_train("max_batch", "synthetic", f"--config.train.batch_size={batch}")

    torch_skip = None if env["torch"] else "torch is not installed"
    result = {
        "train": Stage("train", 0, bench_train("train", "synthetic")),
        "train_pipeline": Stage("train_pipeline", 0, bench_train("train_pipeline", "pipeline")),
        "torch_eager": Stage("torch_eager", 0, torch_bench("torch_eager", False), torch_skip),
        "torch_compile": Stage("torch_compile", 0, torch_bench("torch_compile", True), torch_skip),
        "rank": Stage("rank", 0, [py, "tools/bench_ranking.py", f"--n={args.rank_n}", out("rank")]),
        "embed": Stage("embed", 0, bench_train("embed", "embed", "--split=train")),
        "max_batch": Stage("max_batch", 0, max_batch),
        "input": Stage(
            "input",
            0,
            [
                py,
                "tools/bench_input.py",
                f"--workers={args.workers or input_workers(env['cpus'])}",
                f"--batch_size={args.input_batch}",
                f"--num_batches={args.input_batches}",
                f"--num_recipes={args.data_recipes}",
                f"--image_size={args.data_px}",
                f"--cache_dir={os.path.join(args.cache_dir, 'data')}",
                f"--json={stage_json(runs, 'input')}",
            ],
        ),
        "lower": Stage(
            "lower",
            0,
            [py, "tools/lower_for_gpu.py", f"--config={args.config}", *overrides, out("lower")],
            None if gpu or env["cuda_plugin"] else "no CUDA plugin to lower with",
        ),
    }
    for name, switch in switches(config).items():
        on, values = flipped(switch, config)
        sets = [f"--config.{k}={v}" for k, v in values.items()]
        stage = Stage(name, 0, bench_train(name, switch.mode, *sets))
        stage.switch = (
            f"{'off' if on else 'on'} ({', '.join(f'{k}={v}' for k, v in values.items())})"
        )
        if switch.needs_gpu and not on and not gpu:
            stage.skip = f"{name} needs a CUDA GPU"
        if name == "fsdp" and env["devices"] < 2:
            stage.skip = "one device: FSDP would shard over a data axis of 1 (the same program)"
        result[name] = stage
    ordered = []
    for name, limit in PLAN:
        stage = result[name]
        stage.limit_s = args.stage_limit_s or limit
        if args.only and name not in args.only:
            stage.skip = "not in --only"
        elif name in args.skip:
            stage.skip = "--skip"
        ordered.append(stage)
    return ordered


def input_workers(cpus: int) -> str:
    """bench_input's worker counts: one (the rate per core) and every core but two (what b16's
    `data.num_workers=auto` takes)."""
    return ",".join(str(n) for n in sorted({1, max(1, cpus - 2)}))


def first_result(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The first result row of a bench tool's JSON, when the stage wrote one."""
    results = (row or {}).get("result", {}).get("results")
    return results[0] if results else None


def run_stage(
    stage: Stage,
    deadline: float,
    env: dict[str, str],
    runs: str,
    rows: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one stage in a subprocess (its own process group) with its log under `runs`; its JSON
    read back if written. Not started when its whole limit does not fit before `deadline`."""
    command = stage.command(rows or {}) if callable(stage.command) else stage.command
    row: dict[str, Any] = {"stage": stage.name, "limit_s": stage.limit_s}
    if stage.switch:
        row["switch"] = stage.switch
    if stage.skip or isinstance(command, str):
        return {**row, "status": "skipped", "reason": stage.skip or command}
    row["command"] = " ".join(command)
    left = int(deadline - time.monotonic())
    if stage.limit_s > left:
        return {**row, "status": "not run", "reason": f"needs {stage.limit_s} s, {left} s left"}
    log = os.path.join(runs, f"{stage.name}.log")
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=stage.limit_s)
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({stage.limit_s} s)"
        finally:  # the stage's own children too (Grain workers, compile workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    row.update(status=status, seconds=round(time.monotonic() - start, 1))
    written = stage_json(runs, stage.name)  # each stage's tool writes its JSON there
    if os.path.exists(written):
        with open(written) as f:
            row["result"] = json.load(f)
    if status != "ok":
        with open(log) as f:
            row["log_tail"] = f.read()[-2000:]
    return row


def gib(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def memory(res: dict[str, Any]) -> str:
    """Peak device memory of a result, with the device's usable memory where known."""
    peak = res.get("peak_memory_bytes")
    if peak is None:
        text = "peak memory not available here"
    else:
        text = f"peak {gib(peak)}"
        if res.get("memory_limit_bytes"):
            text += f" of {gib(res['memory_limit_bytes'])}"
    if res.get("planned_memory_bytes"):
        text += f" (XLA plan {gib(res['planned_memory_bytes'])})"
    return text


def eps(rows: dict[str, dict[str, Any]], name: str) -> float | None:
    res = first_result(rows.get(name))
    return res.get("examples_per_sec") if res else None


def summary(row: dict[str, Any], rows: dict[str, dict[str, Any]] | None = None) -> str:
    """The numbers that matter of one stage's JSON, in a few words."""
    rows = rows or {}
    r = row.get("result")
    if not r:
        return row.get("reason", "") or (row.get("log_tail", "").strip().splitlines() or [""])[-1]
    name = row["stage"]
    if name == "env":
        v = r["versions"]
        return (
            f"{r['device_kind']} x {r['devices']} ({r['backend']}, {r['platform_version']}), "
            f"driver {r.get('driver') or 'n/a'}, jax {v.get('jax')}, torch {v.get('torch')}"
        )
    if name == "lower":
        parts = []
        for prog in ("train_step", "eval_embed", "decode"):
            if prog in r:
                p = r[prog]
                calls = p.get("cudnn_attention_calls", "-")
                parts.append(f"{prog} {'ok' if p.get('ok') else 'FAILED'} ({calls} cuDNN)")
        return ", ".join(parts)
    if name == "rank":
        return (
            f"{1e3 * r['call_s_median']:.1f} ms per {r['n']} x {r['n']} ranking"
            f" (first call {r['first_call_s']:.1f} s)"
        )
    if name == "input":
        per = ", ".join(
            f"{x['workers']} workers: {x['images_per_s']:.0f} images/s"
            f" ({x['images_per_s_per_core']:.0f} per core)"
            for x in r["rows"]
        )
        return f"{per}; {r['stages']['total_ms']:.2f} ms per image on one core"
    res = r["results"][0]
    if name == "embed":
        return (
            f"loop {res['examples_per_sec']:.1f} examples/s over {res['examples']} of "
            f"{res['split']} (first pass {res['first_pass_s']:.0f} s), step alone "
            f"{res['device_examples_per_sec']:.1f} examples/s; {memory(res)}"
        )
    if name.startswith("torch"):
        text = f"{res['examples_per_sec']:.1f} examples/s, step {1e3 * res['step_s_median']:.0f} ms"
        text += f", first step {res['first_step_s']:.0f} s; {memory(res)}"
        text += f"; {r['framework']}, CUDA {r.get('cuda')}, cuDNN {r.get('cudnn')}"
        jax_eps = eps(rows, "train")
        if jax_eps:
            text += f"; JAX / this = {jax_eps / res['examples_per_sec']:.2f}x"
        return text
    if not res.get("fits", True):
        return f"does not fit: {res.get('error', '')}; {memory(res)}"
    mfu = res.get("mfu")
    text = (
        f"{res['examples_per_sec']:.1f} examples/s, step {1e3 * res['step_s_median']:.0f} ms"
        f", MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}"
        f", compile {res['compile_s']:.0f} s{' (cached)' if res.get('compile_cache_hit') else ''}"
        f"; {memory(res)}"
    )
    if res.get("largest_batch_estimate"):
        text += f"; largest batch ~{res['largest_batch_estimate']}"
    if "host_pipeline_examples_per_sec_per_process" in res:
        text += f"; host pipeline alone {res['host_pipeline_examples_per_sec_per_process']:.0f}/s"
    base = "train_pipeline" if name == "device_prefetch" else "train"
    if name != "train" and eps(rows, base):
        text += f"; {res['examples_per_sec'] / eps(rows, base):.3f}x {base}"
    if "switch" in row:
        text = f"{row['switch']}: {text}"
    return text


def targets(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The GPU issue's targets, each reached, missed or not measured, with its number."""

    def line(what: str, value: float | None, goal: Callable[[float], bool], shown: str) -> str:
        if value is None:
            return f"- {what}: not measured"
        return f"- {what}: {shown.format(value)}, {'reached' if goal(value) else 'missed'}"

    train = first_result(rows.get("train")) or {}
    jax_eps = train.get("examples_per_sec")
    ratio = lambda name: jax_eps / eps(rows, name) if jax_eps and eps(rows, name) else None
    rank = (rows.get("rank") or {}).get("result") or {}
    peak = train.get("peak_flops_per_device")
    peak_name = f" of {peak / 1e12:.0f} TFLOP/s" if peak else ""
    lines = [
        line(f"MFU >= 45%{peak_name}", train.get("mfu"), lambda v: v >= 0.45, "{:.1%}"),
        line(">= 2x PyTorch eager", ratio("torch_eager"), lambda v: v >= 2, "{:.2f}x"),
        line(">= 1.3x torch.compile", ratio("torch_compile"), lambda v: v >= 1.3, "{:.2f}x"),
        line(
            "pipeline-fed step within 5% of synthetic",
            eps(rows, "train_pipeline") / jax_eps
            if jax_eps and eps(rows, "train_pipeline")
            else None,
            lambda v: v >= 0.95,
            "{:.1%} of synthetic",
        ),
        line(
            "10k x 10k ranking under 1 s",
            rank.get("call_s_median") if rank.get("n") == 10_000 else None,
            lambda v: v < 1,
            "{:.3f} s",
        ),
    ]
    measured = [n for n in switches_in(rows) if rows[n]["status"] == "ok"]
    lines.append(f"- speed switches measured on and off: {', '.join(measured) or 'none'}")
    fits = first_result(rows.get("max_batch")) or {}
    if fits:
        lines.append(
            f"- largest batch: {fits.get('per_process_batch')} per process "
            f"{'fits' if fits.get('fits') else 'does not fit'} ({memory(fits)})"
        )
    else:
        lines.append(f"- largest batch: estimate {train.get('largest_batch_estimate') or 'n/a'}")
    embed = first_result(rows.get("embed"))
    if embed:
        lines.append(f"- eval embedding: {embed['examples_per_sec']:.1f} examples/s (loop)")
    return lines


def switches_in(rows: dict[str, dict[str, Any]]) -> list[str]:
    return [n for n, r in rows.items() if "switch" in r]


def markdown(env: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    by_name = {r["stage"]: r for r in rows}
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    lines = [
        f"# gpu_check: {args.config} {' '.join(args.set)}".rstrip(),
        "",
        f"{env.get('device_kind', '?')} x {env.get('devices', '?')} ({env.get('backend', '?')},"
        f" {env.get('platform_version', '?')}), driver {env.get('driver') or 'n/a'},"
        f" {env.get('cpus', '?')} cores, Python {env.get('python', '?')}; {versions}",
        "",
        *targets(by_name),
        "",
        "| stage | status | s / limit | numbers |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        cell = summary(r, by_name).replace("|", "/").replace("\n", " ")
        spent = f"{r.get('seconds', '')} / {r.get('limit_s', '')}"
        lines.append(f"| {r['stage']} | {r['status']} | {spent} | {cell} |")
    return "\n".join(lines) + "\n"


def plan_text(stage_limit_s: int = 0) -> str:
    """The plan: each stage's limit and the running sum from the start-up allowance, the
    must-run stages marked."""
    lines = [f"{'stage':<16} {'limit s':>7} {'sum s':>6}  must run (within {BUDGET_S} s)"]
    total = STARTUP_S
    lines.append(f"{'env (start-up)':<16} {STARTUP_S:>7} {total:>6}  yes")
    for name, limit in PLAN:
        limit = stage_limit_s or limit
        total += limit
        lines.append(f"{name:<16} {limit:>7} {total:>6}  {'yes' if name in MUST_RUN else ''}")
    return "\n".join(lines)


def install_wheels(wheels: str) -> str | None:
    """pip-install the carried wheels into a private folder (nothing is reachable there);
    returns the folder to put on PYTHONPATH, or None without wheels."""
    files = sorted(glob.glob(os.path.join(wheels, "*.whl"))) if wheels else []
    if not files:
        return None
    target = os.path.join(tempfile.gettempdir(), "xmodal-gpu-check-site")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    pip += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", target, *files]
    subprocess.run(pip, check=True)
    return target


# The packages whose versions the env stage reports (the CUDA plugin's under either CUDA).
VERSIONED = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "nvidia-cudnn-cu13",
    "nvidia-cudnn-cu12",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "array-record",
    "ml-collections",
    "numpy",
    "torch",
)
# The baseline's values that the switches and the stages read.
SWITCH_FIELDS = (
    "model.attention",
    "model.dtype",
    "model.remat",
    "model.text.packed_ingredient_tokens",
    "model.text.packed_instruction_tokens",
    "data.max_ingredients",
    "data.max_ingredient_tokens",
    "data.max_instructions",
    "data.max_instruction_tokens",
    "data.prefetch",
    "train.batch_size",
    "train.grad_accum_steps",
    "train.grad_accum",
    "train.mu_dtype",
    "train.fsdp",
)


def probe(config_spec: str, sets: list[str]) -> dict[str, Any]:
    """The environment stage, run in a subprocess with the installed wheels on its path: devices,
    software versions (packages, the CUDA plugin's libraries, the driver), and the baseline
    config's values the switches read (attention resolved as the model resolves `auto`)."""
    import importlib.util
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import jax

    from xmodal.apps.cli import load_config_file, with_overrides
    from xmodal.data.pipeline import usable_cores
    from xmodal.models.layers import attention_implementation

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def has(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    libraries: dict[str, Any] = {}
    try:  # the CUDA plugin's own report of the libraries it loaded
        from jax._src.lib import cuda_versions
    except ImportError:
        cuda_versions = None
    for fn in dir(cuda_versions) if cuda_versions else []:
        if fn.endswith("_get_version"):
            try:
                libraries[fn[: -len("_get_version")]] = getattr(cuda_versions, fn)()
            except Exception as e:  # a library that is not there
                libraries[fn[: -len("_get_version")]] = f"n/a ({type(e).__name__})"
    driver = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True, timeout=20)
        driver = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    config = with_overrides(load_config_file(config_spec), dict(s.split("=", 1) for s in sets))
    flat: dict[str, Any] = {}
    for k in SWITCH_FIELDS:
        value: Any = config
        for part in k.split("."):
            value = value[part]
        flat[k] = value
    flat["model.attention"] = attention_implementation(config.model.attention, config.model.dtype)
    d = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "devices": jax.device_count(),
        "platform_version": d.client.platform_version.strip().replace("\n", " "),
        "driver": driver,
        "cuda_libraries": libraries,
        "cuda_plugin": has("jax_plugins.xla_cuda12") or has("jax_plugins.xla_cuda13"),
        "torch": has("torch"),
        "python": platform.python_version(),
        "cpus": usable_cores(),
        "versions": {n: installed(n) for n in VERSIONED},
        "environment_info": jax.print_environment_info(return_string=True),
        "config": flat,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the env stage
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--budget_s", type=int, default=BUDGET_S, help="the whole check, start-up too")
    p.add_argument("--config", default="configs/tnlbt.py:b16")
    p.add_argument("--set", action="append", default=[], help="a.b=v: a config override")
    p.add_argument("--steps", type=int, default=10, help="measured steps of each step stage")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--vocab_size", type=int, default=16384, help="every JAX and torch stage's")
    p.add_argument("--data_recipes", type=int, default=4000, help="built-in recipes generated")
    p.add_argument("--data_px", type=int, default=256, help="the built-in photos' drawn size")
    p.add_argument("--workers", default="", help="bench_input's worker counts (default: 1,cores-2)")
    p.add_argument("--input_batch", type=int, default=64, help="bench_input's batch")
    p.add_argument("--input_batches", type=int, default=50, help="bench_input's timed batches")
    p.add_argument("--rank_n", type=int, default=10_000)
    p.add_argument("--max_batch", type=int, default=0, help="max_batch's (0: train's estimate)")
    p.add_argument("--wheels", default="", help="folder of wheels to install first (.whl)")
    p.add_argument(
        "--cache_dir",
        default=os.path.join(tempfile.gettempdir(), "xmodal-gpu-check"),
        help="compiled programs (jax/) and built-in data (data/) shared by the stages",
    )
    p.add_argument("--only", default="", help="comma-separated stages to run, no others")
    p.add_argument("--skip", default="", help="comma-separated stages not to run")
    p.add_argument("--stage_limit_s", type=int, default=0, help="every stage's limit (0: plan's)")
    args, rest = p.parse_known_args(argv)
    if rest and not args.probe:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    names = {name for name, _ in PLAN}
    args.only = {s for s in args.only.split(",") if s}
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = (args.only | args.skip) - names
    if unknown:
        p.error(f"unknown stages {sorted(unknown)}; the plan has {[n for n, _ in PLAN]}")
    return args


def stage_env(args: argparse.Namespace, site: str | None) -> dict[str, str]:
    """The stages' environment: the repository and the wheels on the path, one compilation
    cache, and JAX allowed most of the GPU's memory (its default preallocates 75%)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, site, env.get("PYTHONPATH")) if p)
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(args.cache_dir, "jax")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(plan_text(args.stage_limit_s))
        return 0
    if args.probe:
        print(json.dumps(probe(args.config, args.set)))
        return 0
    deadline = time.monotonic() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    runs = tempfile.mkdtemp(prefix="gpu_check-")
    start = time.monotonic()
    env = stage_env(args, install_wheels(args.wheels))
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", f"--config={args.config}"]
    cmd += [f"--set={s}" for s in args.set]
    try:
        probed = subprocess.run(
            cmd,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.stage_limit_s or STARTUP_S,
        )
    except subprocess.TimeoutExpired as e:
        probed = subprocess.CompletedProcess(e.cmd, 1, "", "the environment probe timed out")
    facts: dict[str, Any] = {}
    if probed.returncode == 0:
        facts = json.loads(probed.stdout.strip().splitlines()[-1])
    env_row = {"stage": "env", "status": "ok" if facts else "failed", "limit_s": STARTUP_S}
    env_row.update(seconds=round(time.monotonic() - start, 1), result=facts)
    rows = [{**env_row, "log_tail": probed.stderr[-2000:]}]
    print(f"{'env':<16} {env_row['status']:<18} {env_row['seconds']}", flush=True)
    done: dict[str, dict[str, Any]] = {}
    for stage in stages(args, facts, runs) if facts else []:
        row = run_stage(stage, deadline, env, runs, done)
        rows.append(row)
        done[stage.name] = row
        print(f"{row['stage']:<16} {row['status']:<18} {row.get('seconds', '')}", flush=True)
    table = markdown(facts, rows, args)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(table)
    record = {"args": vars(args) | {"only": sorted(args.only), "skip": sorted(args.skip)}}
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump({**record, "stages": rows}, f, indent=2)
    with tarfile.open(os.path.join(args.out, "runs.tar.gz"), "w:gz") as tar:
        tar.add(runs, arcname="runs")
    shutil.rmtree(runs, ignore_errors=True)
    print(table)
    return exit_status(rows)


def exit_status(rows: list[dict[str, Any]]) -> int:
    """0 when every stage ran or was skipped for a stated reason; 1 when one failed, timed out
    or was not run."""
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
