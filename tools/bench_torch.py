"""Training throughput of the PyTorch reference (tools/torch_reference.py) on the same config,
batch and input sizes as tools/bench_train.py, with the same metrics and JSON layout.

  python tools/bench_torch.py --config=configs/tnlbt.py:b16 [--amp=bf16|none] [--compile]
      [--steps=20] [--warmup=3] [--out=FILE.json]

The same model and objective as the JAX step: the config's cross decoder (with its targets in
the batch) and margin schedule (the step number is passed, so a linear margin moves). AMP: bf16
autocast, float32 master weights, fused AdamW on GPU, the same gradient clipping and weight
decay. --compile wraps the whole step function (zero_grad, forward, loss, backward, clipping,
optimizer) in `torch.compile`, not the model alone (dynamo breaks it at backward() and at the
optimizer). Synthetic data on the device (the model
alone), like bench_train's synthetic mode. One device (the comparison is per GPU).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags

from tools import torch_reference as ref
from xmodal import perf
from xmodal.data import schema
from xmodal.data.pipeline import TextLimits
from xmodal.run import decoder_trains

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].")
_AMP = flags.DEFINE_enum("amp", "bf16", ["bf16", "none"], "Autocast dtype.")
_COMPILE = flags.DEFINE_bool("compile", False, "Wrap the model in torch.compile.")
_STEPS = flags.DEFINE_integer("steps", 20, "Measured steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Steps before measuring.")
_VOCAB = flags.DEFINE_integer("vocab_size", 16384, "Vocabulary (H-T: ~16k).")
_OUT = flags.DEFINE_string("out", None, "JSON output (default: bench_torch_<preset>.json).")
flags.mark_flags_as_required(["config"])


def synthetic_batch(config, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    d, b = config.data, config.train.batch_size
    g = torch.Generator(device="cpu").manual_seed(0)

    def ids(*shape):
        return torch.randint(1, vocab, shape, generator=g)

    batch = {name: ids(*shape) for name, shape in TextLimits.from_config(d).shapes(b).items()}
    if decoder_trains(config):  # the JAX benchmark feeds the decoder's targets too
        batch[schema.DECODER_TOKENS] = ids(b, d.max_decoder_tokens)
    batch[schema.IMAGE] = torch.randint(0, 256, (b, d.image_size, d.image_size, 3), generator=g).to(
        torch.uint8
    )
    return {k: v.to(device) for k, v in batch.items()}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    model = ref.DualEncoder(config, _VOCAB.value).to(device).train()
    params = ref.count_params(model)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        fused=device.type == "cuda",
    )
    amp = _AMP.value == "bf16"
    batch = synthetic_batch(config, _VOCAB.value, device)
    total = config.train.num_steps

    def train_step(step: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = ref.tnlbt_loss(model(batch), batch, config.loss, step, total)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        opt.step()
        return loss

    compiled = torch.compile(train_step) if _COMPILE.value else train_step
    # The step number lives on the device and is advanced there: a tensor made from a host
    # number each step would be a blocking copy inside the timed window.
    step_number = torch.zeros((), device=device)

    def step() -> torch.Tensor:
        loss = compiled(step_number)
        step_number.add_(1)
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # includes torch.compile's compile when on
    sync()
    first_step_s = time.perf_counter() - start
    for _ in range(_WARMUP.value):
        step()
    sync()
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        loss = step()
    sync()
    window = time.perf_counter() - start
    b = config.train.batch_size
    flops = perf.train_flops_per_example(config, vocab_size=_VOCAB.value)["train"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    # MFU against the bf16 tensor-core peak (xmodal.perf's table); n/a without AMP.
    peak = perf.peak_flops_of_kind(name, "bfloat16") if amp else None
    eps = _STEPS.value * b / window
    row = {
        "devices": 1,
        "examples_per_sec": eps,
        "step_s_median": float(np.median(times)),
        "step_s_p90": float(np.percentile(times, 90)),
        "first_step_s": first_step_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "model_flops_per_example": flops,
        "mfu": flops * eps / peak if peak else None,
        "params": params,
        "final_loss": float(loss.detach()),
    }
    header = {
        "framework": f"torch {torch.__version__}",
        "cuda": torch.version.cuda,  # the CUDA and cuDNN torch was built with and loaded
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_kind": name,
        "config": f"{config.method}:{config.preset}",
        "batch_size": b,
        "amp": _AMP.value,
        "compile": _COMPILE.value,
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    print(
        f"{name} | torch {torch.__version__} | {header['config']} | batch={b} | amp={_AMP.value} "
        f"| compile={_COMPILE.value}"
    )
    mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    mem = row["peak_memory_bytes"]
    print("examples/s  step ms (med/p90)  first step s  peak mem GiB  GFLOP/ex  MFU  params")
    print(
        f"{eps:>10.1f}  {1e3 * row['step_s_median']:>8.1f} / {1e3 * row['step_s_p90']:<7.1f}  "
        f"{first_step_s:>12.1f}  {'n/a' if mem is None else f'{mem / 2**30:.2f}':>12}  "
        f"{flops / 1e9:>8.3f}  {mfu}  {params:,}"
    )
    out = _OUT.value or f"bench_torch_{config.preset}.json"
    with open(out, "w") as f:
        json.dump({**header, "results": [row]}, f, indent=2, default=str)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
