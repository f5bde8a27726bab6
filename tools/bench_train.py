"""Training throughput of a config: examples/s, step time, compile time, peak memory, FLOPs, MFU.

  python tools/bench_train.py --config=configs/tnlbt.py:b16 [--config.a.b=v ...]
      [--mode=synthetic|pipeline] [--devices=1,2,4,8] [--steps=20] [--warmup=3] [--out=FILE.json]

synthetic: one random batch put on the devices once and reused (the model alone: no host work,
no transfers). pipeline: the real Grain pipeline and device prefetcher feed every step (model +
input); it also times the host pipeline alone, to show whether input can keep up.

Step times are measured with the step blocked on (median, p90); examples/s is measured over an
unblocked window (steps dispatched back to back, as in training). FLOPs per example come twice:
analytic (xmodal.perf, model FLOPs: the MFU numerator) and XLA's count of the compiled program
(forward + backward + optimizer, as a cross-check). Prints one table; writes the numbers as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from xmodal import perf
from xmodal.data import pipeline, schema
from xmodal.run import Run, decoder_trains
from xmodal.runtime import distributed, sharding
from xmodal.runtime import state as state_lib
from xmodal.training import loop as train
from xmodal.training.step import compile_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_MODE = flags.DEFINE_enum("mode", "synthetic", ["synthetic", "pipeline"], "Input source.")
_DEVICES = flags.DEFINE_list("devices", [], "Device counts to run (default: all devices).")
_STEPS = flags.DEFINE_integer("steps", 20, "Measured steps (each timing pass).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Steps run before measuring.")
_VOCAB = flags.DEFINE_integer("vocab_size", 16384, "Vocabulary in synthetic mode (H-T: ~16k).")
_OUT = flags.DEFINE_string("out", None, "JSON output (default: bench_train_<preset>_<mode>.json).")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir",
    None,
    "If set, profile `steps` more steps into this folder (jax.profiler: open the .xplane.pb in "
    "TensorBoard / XProf or the .trace.json.gz in Perfetto) to see which ops take the step.",
)
flags.mark_flags_as_required(["config"])


def synthetic_batch(config: Any, vocab_size: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """A random global batch with the train pipeline's keys, shapes and dtypes: each process makes
    its rows with `pipeline.random_batch` (the decoder's targets when the decoder trains; without
    them the model skips it), assembled batch-sharded like the real one."""
    decoder = config.data.max_decoder_tokens if decoder_trains(config) else 0
    rows = sharding.check_batch_size(config.train.batch_size, mesh)
    host = pipeline.random_batch(
        config.data, rows, vocab_size, seed=jax.process_index(), decoder_tokens=decoder
    )
    return sharding.global_batch(host, mesh)


def peak_memory(devices: list[jax.Device]) -> int | None:
    """Largest peak bytes in use over this process's devices (another process's cannot be asked);
    None where the backend keeps no stats (CPU)."""
    peaks = []
    for dev in devices:
        if dev.process_index != jax.process_index():
            continue
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def host_pipeline_rate(run: Run, batches: int) -> float:
    """Examples/s of this process's Grain pipeline alone (decode + augment + batch), counted in
    the per-process batches it makes (the global batch over the processes). It reads the batches
    training reads (`loop.train_iterator`: decoder targets when the decoder trains, text-only
    batches when configured), so the benchmark feeds the step it measures."""
    it = train.train_iterator(run)
    per_process = sharding.check_batch_size(run.config.train.batch_size, run.mesh)
    first = next(it)  # start-up (worker spawn) is not throughput
    if len(first[schema.IMAGE]) != per_process:
        raise AssertionError(f"{len(first[schema.IMAGE])} rows per process, expected {per_process}")
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * per_process / (time.perf_counter() - start)


def bench_devices(config: Any, num_devices: int, mode: str, steps: int, warmup: int) -> dict:
    if jax.process_count() > 1 and num_devices != jax.device_count():
        raise ValueError(
            f"--devices={num_devices}: a job of {jax.process_count()} processes benchmarks all "
            f"{jax.device_count()} devices (a sub-mesh would leave processes without devices)"
        )
    mesh = sharding.make_mesh(num_devices)
    result: dict[str, Any] = {
        "devices": num_devices,
        "per_process_batch": sharding.check_batch_size(config.train.batch_size, mesh),
    }
    if mode == "pipeline":  # the run's own set-up: its data, vocabulary and state layout
        run = Run.create(config, "", mesh=mesh)
        layout = run.layout
        batches = sharding.DevicePrefetcher(train.train_iterator(run), mesh, config.data.prefetch)
        next_batch = lambda: next(batches)
        first = next_batch()
        result["host_pipeline_examples_per_sec_per_process"] = host_pipeline_rate(run, steps)
    else:  # no dataset: the state layout for the flag's vocabulary
        layout = state_lib.StateLayout.create(config, _VOCAB.value, mesh)
        first = synthetic_batch(config, layout.vocab_size, mesh)
        next_batch = lambda: first

    result["vocab_size"] = layout.vocab_size
    state = layout.init()
    start = time.perf_counter()
    compiled = compile_train_step(layout, config, mesh).lower(state, first).compile()
    result["compile_s"] = time.perf_counter() - start
    xla_flops = perf.compiled_flops(compiled)  # of one device's partitioned program
    b = config.train.batch_size
    result["xla_flops_per_example"] = xla_flops * num_devices / b if xla_flops else None

    for _ in range(warmup):
        state, metrics = compiled(state, next_batch())
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):  # blocked: the time of one step
        start = time.perf_counter()
        state, metrics = compiled(state, next_batch())
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(steps):  # pipelined: steps dispatched back to back
        state, metrics = compiled(state, next_batch())
    jax.block_until_ready((state, metrics))
    window = time.perf_counter() - start
    if _TRACE_DIR.value:
        trace_dir = os.path.join(_TRACE_DIR.value, f"devices{num_devices}")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, next_batch())
            jax.block_until_ready((state, metrics))
        result["trace_dir"] = trace_dir
    result.update(
        step_s_median=float(np.median(times)),
        step_s_p90=float(np.percentile(times, 90)),
        examples_per_sec=steps * b / window,
        peak_memory_bytes=peak_memory(list(mesh.devices.flat)),
        final_loss=float(metrics["loss"]),
    )
    return result


def add_utilisation(config: Any, row: dict) -> None:
    flops = perf.train_flops_per_example(config, vocab_size=row["vocab_size"])
    row["model_flops_per_example"] = flops["train"]
    row["model_flops_per_example_decoder"] = flops["decoder"]
    device = jax.devices()[0]
    peak = perf.peak_flops(device, config.model.dtype)
    row["peak_flops_per_device"] = peak
    achieved = flops["train"] * row["examples_per_sec"] / row["devices"]
    row["model_flops_per_sec_per_device"] = achieved
    row["mfu"] = achieved / peak if peak else None


def fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def print_table(rows: list[dict], header: dict) -> None:
    print(
        f"{header['device_kind']} | {header['config']} | mode={header['mode']} | "
        f"batch={header['batch_size']} | processes={header['processes']} | "
        f"dtype={header['dtype']} | remat={header['remat']} | "
        f"fsdp={header['fsdp']} | accum={header['grad_accum_steps']}"
    )
    cols = (
        "devices  examples/s  step ms (med/p90)  compile s  peak mem GiB  GFLOP/ex (model/XLA)  MFU"
    )
    print(cols)
    for r in rows:
        mem = r["peak_memory_bytes"] / 2**30 if r["peak_memory_bytes"] else None
        xla = r["xla_flops_per_example"] / 1e9 if r["xla_flops_per_example"] else None
        print(
            f"{r['devices']:>7}  {r['examples_per_sec']:>10.1f}  "
            f"{1e3 * r['step_s_median']:>8.1f} / {1e3 * r['step_s_p90']:<7.1f}  "
            f"{r['compile_s']:>9.1f}  {fmt(mem, '>12.2f')}  "
            f"{r['model_flops_per_example'] / 1e9:>9.3f} / {fmt(xla, '<9.3f')}  "
            f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''}"
        )
        if "host_pipeline_examples_per_sec_per_process" in r:
            print(
                f"         host pipeline alone: "
                f"{r['host_pipeline_examples_per_sec_per_process']:.1f} examples/s per process "
                f"(batch {r['per_process_batch']} per process)"
            )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize()  # joins a multi-process job as xmodal.main does; else nothing
    config = _CONFIG.value
    counts = [int(n) for n in _DEVICES.value] or [jax.device_count()]
    rows = []
    for n in counts:
        row = bench_devices(config, n, _MODE.value, _STEPS.value, _WARMUP.value)
        add_utilisation(config, row)
        rows.append(row)
    header = {
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "config": f"{config.method}:{config.preset}",
        "mode": _MODE.value,
        "batch_size": config.train.batch_size,
        "processes": jax.process_count(),
        "dtype": config.model.dtype,
        "attention": config.model.attention,
        "remat": config.model.remat,
        "fsdp": config.train.fsdp,
        "grad_accum_steps": config.train.grad_accum_steps,
        "steps": _STEPS.value,
        "jax": jax.__version__,
        "argv": sys.argv,
    }
    if jax.process_index() != 0:
        return
    print_table(rows, header)
    out = _OUT.value or f"bench_train_{config.preset}_{_MODE.value}.json"
    with open(out, "w") as f:
        json.dump(
            {**header, "config_full": config.to_dict(), "results": rows}, f, indent=2, default=str
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
