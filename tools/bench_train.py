"""Training throughput of a config: examples/s, step time, compile time, peak memory, FLOPs, MFU;
and eval embedding throughput.

  python tools/bench_train.py --config=configs/tnlbt.py:b16 [--config.a.b=v ...]
      [--mode=synthetic|pipeline|embed] [--devices=1,2,4,8] [--steps=20] [--warmup=3]
      [--vocab_size=N] [--split=train] [--out=FILE.json]

synthetic: one random batch put on the devices once and reused (the model alone: no host work,
no transfers). pipeline: the real Grain pipeline and device prefetcher feed every step (model +
input); it also times the host pipeline alone, to show whether input can keep up. embed: the
eval embedding loop (`runtime.embed.Embedder.split`, as validation and `--mode=eval` run it) over
`--split` of the run's data, in whole eval batches; and its compiled embed step alone on one
batch kept on the devices. With `--vocab_size` larger than the data's, pipeline and embed build
the state for that vocabulary (rows past the data's words are never read), so a pipeline-fed
step is the synthetic step's very program (the persistent compilation cache serves it).

Step times are measured with the step blocked on (median, p90); examples/s is measured over an
unblocked window (steps dispatched back to back, as in training). FLOPs per example come twice:
analytic (xmodal.perf, model FLOPs: the MFU numerator) and XLA's count of the compiled program
(forward + backward + optimizer, as a cross-check). Memory: the devices' peak bytes in use (where
the backend keeps statistics: not on CPU), XLA's plan for the compiled step (arguments + outputs
- donated + temporaries) and, where the device reports its limit, the largest batch estimated
to fit (linear in the batch from the peak). A step whose plan exceeds the limit is not run, and
one that runs out of memory is reported: `fits: false` with the numbers. Prints one table;
writes the numbers as JSON.
"""

from __future__ import annotations

import dataclasses
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
from xmodal.models.dual_encoder import DualEncoder
from xmodal.models.layers import attention_implementation
from xmodal.run import Run, decoder_trains
from xmodal.runtime import distributed, embed, sharding
from xmodal.runtime import state as state_lib
from xmodal.training import loop as train
from xmodal.training.step import compile_train_step

SYNTHETIC_VOCAB = 16384  # about H-T's Recipe1M vocabulary
EMBED_PASSES = 2  # timed passes of the embed loop over the split, after the first (compiling) one

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_MODE = flags.DEFINE_enum(
    "mode", "synthetic", ["synthetic", "pipeline", "embed"], "Input source, or the eval loop."
)
_DEVICES = flags.DEFINE_list("devices", [], "Device counts to run (default: all devices).")
_STEPS = flags.DEFINE_integer("steps", 20, "Measured steps (each timing pass).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Steps run before measuring.")
_VOCAB = flags.DEFINE_integer(
    "vocab_size",
    None,
    f"Vocabulary: synthetic mode's (default {SYNTHETIC_VOCAB}); pipeline and embed: the data's, "
    "padded up to this when larger.",
)
_SPLIT = flags.DEFINE_string("split", "train", "embed mode: the prepared split embedded.")
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


def data_run(config: Any, mesh: jax.sharding.Mesh, vocab_size: int | None) -> Run:
    """The run's own set-up on its data (built-in data built on first use), its state laid out
    for `vocab_size` when that is larger than the data's vocabulary."""
    run = Run.create(config, "", mesh=mesh)
    if vocab_size and vocab_size > run.vocab_size:
        layout = state_lib.StateLayout.create(config, vocab_size, mesh)
        run = dataclasses.replace(run, layout=layout)
    return run


def _local(devices: list[jax.Device]) -> list[jax.Device]:
    return [d for d in devices if d.process_index == jax.process_index()]


def _memory_stat(devices: list[jax.Device], key: str) -> int | None:
    """Largest `key` of `memory_stats()` over this process's devices (another process's cannot
    be asked); None where the backend keeps no stats (CPU)."""
    values = []
    for dev in _local(devices):
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and key in stats:
            values.append(int(stats[key]))
    return max(values) if values else None


def peak_memory(devices: list[jax.Device]) -> int | None:
    """Largest peak bytes in use over this process's devices; None on CPU."""
    return _memory_stat(devices, "peak_bytes_in_use")


def memory_limit(devices: list[jax.Device]) -> int | None:
    """The bytes the allocator may use on one device (JAX takes XLA_PYTHON_CLIENT_MEM_FRACTION of
    the GPU, 75% by default); None on CPU."""
    return _memory_stat(devices, "bytes_limit")


def state_bytes(state: Any) -> int:
    """Bytes of the train state on one device (its shards, under FSDP)."""
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))


def out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


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
    devices = list(mesh.devices.flat)
    result: dict[str, Any] = {
        "devices": num_devices,
        "per_process_batch": sharding.check_batch_size(config.train.batch_size, mesh),
    }
    if mode == "pipeline":  # the run's own set-up: its data, vocabulary and state layout
        run = data_run(config, mesh, _VOCAB.value)
        layout = run.layout
        batches = sharding.DevicePrefetcher(train.train_iterator(run), mesh, config.data.prefetch)
        next_batch = lambda: next(batches)
        first = next_batch()
        result["host_pipeline_examples_per_sec_per_process"] = host_pipeline_rate(run, steps)
    else:  # no dataset: the state layout for the flag's vocabulary
        layout = state_lib.StateLayout.create(config, _VOCAB.value or SYNTHETIC_VOCAB, mesh)
        first = synthetic_batch(config, layout.vocab_size, mesh)
        next_batch = lambda: first

    result["vocab_size"] = layout.vocab_size
    state = layout.init()
    result["state_bytes"] = state_bytes(state)
    start = time.perf_counter()
    with perf.CompileCounter() as counter:
        compiled = compile_train_step(layout, config, mesh).lower(state, first).compile()
    result["compile_s"] = time.perf_counter() - start
    result["compile_cache_hit"] = counter.cache_hits > 0
    xla_flops = perf.compiled_flops(compiled)  # of one device's partitioned program
    b = config.train.batch_size
    result["xla_flops_per_example"] = xla_flops * num_devices / b if xla_flops else None
    result["planned_memory_bytes"] = perf.planned_memory_bytes(compiled)
    result["memory_limit_bytes"] = memory_limit(devices)
    result["peak_memory_bytes"] = None
    limit, planned = result["memory_limit_bytes"], result["planned_memory_bytes"]
    if limit and planned and planned > limit:
        result.update(fits=False, error=f"XLA plans {planned} bytes per device; {limit} usable")
        return result
    try:
        result.update(time_steps(compiled, state, next_batch, steps, warmup, num_devices))
    except jax.errors.JaxRuntimeError as e:
        if not out_of_memory(e):
            raise
        result.update(fits=False, error=str(e).splitlines()[0][:500])
        result["peak_memory_bytes"] = peak_memory(devices)
        return result
    result["fits"] = True
    result["examples_per_sec"] = steps * b / result.pop("window_s")
    result["peak_memory_bytes"] = peak_memory(devices)
    result["largest_batch_estimate"] = perf.largest_batch(
        b, num_devices, result["peak_memory_bytes"], limit, result["state_bytes"]
    )
    return result


def time_steps(
    compiled: Any, state: Any, next_batch: Any, steps: int, warmup: int, num_devices: int
) -> dict[str, Any]:
    """Warm-up, `steps` blocked steps (their median and p90), then `steps` dispatched back to
    back (the window examples/s is measured over); a profile of `steps` more with --trace_dir."""
    for _ in range(warmup):
        state, metrics = compiled(state, next_batch())
    jax.block_until_ready(state)
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
    out: dict[str, Any] = {"window_s": time.perf_counter() - start}
    if _TRACE_DIR.value:
        trace_dir = os.path.join(_TRACE_DIR.value, f"devices{num_devices}")
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, next_batch())
            jax.block_until_ready((state, metrics))
        out["trace_dir"] = trace_dir
    out.update(
        step_s_median=float(np.median(times)),
        step_s_p90=float(np.percentile(times, 90)),
        final_loss=float(metrics["loss"]),
    )
    return out


def bench_embed(config: Any, num_devices: int, steps: int, split: str) -> dict:
    """The eval embedding loop over `split` in whole global eval batches (no padded rows): a
    first pass (compilation, worker start-up), then `EMBED_PASSES` timed passes; and the
    loop's compiled embed step alone, `steps` calls on one of its batches kept on the devices."""
    mesh = sharding.make_mesh(num_devices)
    devices = list(mesh.devices.flat)
    run = data_run(config, mesh, _VOCAB.value)
    state = run.layout.init()
    global_batch = config.eval.batch_size
    local_batch = sharding.check_batch_size(global_batch, mesh)
    n = len(pipeline.open_split(run.data_dir, split))
    limit = n // global_batch * global_batch or n  # fewer than one batch: one padded batch
    embedder = embed.Embedder(run.layout, mesh)
    result: dict[str, Any] = {
        "devices": num_devices,
        "split": split,
        "split_examples": n,
        "examples": limit,
        "batch_size": global_batch,
        "vocab_size": run.layout.vocab_size,
    }
    start = time.perf_counter()
    embedder.split(state, run.data_dir, split, config, limit=limit)
    result["first_pass_s"] = time.perf_counter() - start
    times = []
    for _ in range(EMBED_PASSES):
        start = time.perf_counter()
        out = embedder.split(state, run.data_dir, split, config, limit=limit)
        times.append(time.perf_counter() - start)
    if len(next(iter(out.values()))) != limit:
        raise AssertionError(f"embedded {len(next(iter(out.values())))} of {limit} examples")
    result["pass_s_median"] = float(np.median(times))
    result["examples_per_sec"] = limit / result["pass_s_median"]

    ds, _ = pipeline.eval_dataset(
        run.data_dir,
        split,
        config.data,
        batch_size=local_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        limit=limit,
    )
    batch = sharding.global_batch(next(iter(ds)), mesh)  # the loop's keys, shapes and layout
    step = embed.eval_jit(run.layout, mesh, DualEncoder.embed_pairs, out_sharded=True)
    jax.block_until_ready(step(state.params, state.model_state, batch))
    start = time.perf_counter()
    for _ in range(steps):
        outputs = step(state.params, state.model_state, batch)
    jax.block_until_ready(outputs)
    result["device_examples_per_sec"] = steps * global_batch / (time.perf_counter() - start)
    result["peak_memory_bytes"] = peak_memory(devices)
    result["memory_limit_bytes"] = memory_limit(devices)
    return result


def add_utilisation(config: Any, row: dict) -> None:
    flops = perf.train_flops_per_example(config, vocab_size=row["vocab_size"])
    row["model_flops_per_example"] = flops["train"]
    row["model_flops_per_example_decoder"] = flops["decoder"]
    row["model_flops_per_example_adversarial"] = flops["adversarial"]
    device = jax.devices()[0]
    peak = perf.peak_flops(device, config.model.dtype)
    row["peak_flops_per_device"] = peak
    if "examples_per_sec" not in row:  # did not fit
        row["model_flops_per_sec_per_device"] = row["mfu"] = None
        return
    achieved = flops["train"] * row["examples_per_sec"] / row["devices"]
    row["model_flops_per_sec_per_device"] = achieved
    row["mfu"] = achieved / peak if peak else None


def fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def gib(v: int | None) -> float | None:
    return None if v is None else v / 2**30


def print_table(rows: list[dict], header: dict) -> None:
    print(
        f"{header['device_kind']} | {header['config']} | mode={header['mode']} | "
        f"batch={header['batch_size']} | processes={header['processes']} | "
        f"dtype={header['dtype']} | attention={header['attention_resolved']} | "
        f"remat={header['remat']} | fsdp={header['fsdp']} | accum={header['grad_accum_steps']}"
    )
    if header["mode"] == "embed":
        print("devices  examples/s (loop / device alone)  first pass s  peak mem GiB  examples")
        for r in rows:
            print(
                f"{r['devices']:>7}  {r['examples_per_sec']:>10.1f} / "
                f"{r['device_examples_per_sec']:<20.1f}  {r['first_pass_s']:>12.1f}  "
                f"{fmt(gib(r['peak_memory_bytes']), '>12.2f')}  {r['examples']} of {r['split']}"
            )
        return
    cols = (
        "devices  examples/s  step ms (med/p90)  compile s  peak mem GiB (plan)  "
        "GFLOP/ex (model/XLA)  MFU"
    )
    print(cols)
    for r in rows:
        xla = r["xla_flops_per_example"] / 1e9 if r["xla_flops_per_example"] else None
        peak, plan = gib(r["peak_memory_bytes"]), gib(r["planned_memory_bytes"])
        mem = f"{fmt(peak, '.2f')} ({fmt(plan, '.2f')})"
        if not r["fits"]:
            print(f"{r['devices']:>7}  does not fit: {r['error']}  plan {mem}")
            continue
        print(
            f"{r['devices']:>7}  {r['examples_per_sec']:>10.1f}  "
            f"{1e3 * r['step_s_median']:>8.1f} / {1e3 * r['step_s_p90']:<7.1f}  "
            f"{r['compile_s']:>9.1f}  {mem:>19}  "
            f"{r['model_flops_per_example'] / 1e9:>9.3f} / {fmt(xla, '<9.3f')}  "
            f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''}"
        )
        if r["largest_batch_estimate"]:
            print(f"         largest batch estimated to fit: {r['largest_batch_estimate']}")
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
        if _MODE.value == "embed":
            rows.append(bench_embed(config, n, _STEPS.value, _SPLIT.value))
            continue
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
        "attention_resolved": attention_implementation(config.model.attention, config.model.dtype),
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
