"""The one training loop: sharded jit-compiled step, donated state, Grain input, Orbax saves."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx
from tqdm import tqdm

from xmodal import accumulate, checkpointing, evaluate, losses, sharding
from xmodal import state as state_lib
from xmodal.data import info as data_info
from xmodal.data import pipeline, records
from xmodal.metrics import MetricWriter
from xmodal.models.dual_encoder import TEXT_ONLY_PREFIX


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
):
    """Pure step: (state, global batch) -> (new state, scalar metrics)."""
    loss_config = config.loss
    total_steps = config.train.num_steps
    schedule = state_lib.learning_rate_schedule(config.train)

    num_micro = config.train.get("grad_accum_steps", 1)
    accumulate_fn = accumulate.accumulated_grads(config.train.get("grad_accum", "gradcache"))

    def train_step(state: state_lib.TrainState, batch: dict[str, jax.Array]):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.model_state, copy=True)
            model.train()
            nnx.reseed(model, dropout=jax.random.fold_in(state.rng, state.step))
            loss, metrics = losses.compute_losses(
                model(batch), loss_config, step=state.step, total_steps=total_steps
            )
            _, _, model_state = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, model_state)

        if num_micro > 1:  # batches larger than memory (xmodal.accumulate)
            grads, metrics, model_state = accumulate_fn(
                graphdef,
                state.params,
                state.model_state,
                jax.random.fold_in(state.rng, state.step),
                batch,
                lambda outputs: losses.compute_losses(outputs, loss_config),
                num_micro,
            )
        else:
            grads, (metrics, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
        )
        metrics["learning_rate"] = schedule(state.step)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return new_state, metrics

    return train_step


def compile_train_step(graphdef, tx, config, state_shardings, mesh):
    """jit with every sharding spelled out and the state donated (updated in place)."""
    return jax.jit(
        make_train_step(graphdef, tx, config),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def check_num_classes(config: ml_collections.ConfigDict, info: dict[str, Any]) -> None:
    """A class head must match the dataset's classes: out-of-range labels would give a silently
    wrong cross-entropy inside jit."""
    heads = config.model.get("num_classes", 0)
    if heads and heads != info.get("num_classes"):
        raise ValueError(
            f"model.num_classes={heads} but the dataset has {info.get('num_classes')} classes; "
            f"set --config.data.num_classes / --config.model.num_classes to match"
        )


def write_config(workdir: str, config: ml_collections.ConfigDict, data_dir: str) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    record = config.to_dict()
    record["data"]["resolved_dir"] = data_dir
    with open(os.path.join(workdir, checkpointing.CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2, default=str)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train to `config.train.num_steps`, resuming from WORKDIR's latest checkpoint if any.

    Returns the last logged metrics and, when `config.train.eval_at_end`, the test results.
    """
    mesh = sharding.make_mesh()
    local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
    data_dir = data_info.resolve_data_dir(config.data)
    info = data_info.load_info(data_dir)
    check_num_classes(config, info)
    checkpointing.check_compatible(workdir, config)
    write_config(workdir, config, data_dir)

    graphdef, abstract, tx = state_lib.abstract_train_state(config, info["vocab_size"])
    shardings = state_lib.state_shardings(abstract, mesh, **state_lib.fsdp_options(config))
    manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints)
    host_iter = train_iterator(data_dir, config, info, local_batch, mesh)
    latest = manager.latest_step()
    if latest is not None:
        state = checkpointing.restore(
            manager, latest, state_lib.with_shardings(abstract, shardings), host_iter
        )
        print(f"resumed from {checkpointing.checkpoint_dir(workdir)} at step {latest}")
    else:
        init = lambda: state_lib.init_train_state(config, info["vocab_size"])[1]
        state = jax.jit(init, out_shardings=shardings)()
        if config.model.get("image_init"):  # pretrained image encoder (timm / torchvision file)
            from xmodal.models.import_weights import init_image_encoder

            state = init_image_encoder(state, graphdef, config.model.image_init, shardings)

    batches = sharding.DevicePrefetcher(host_iter, mesh, config.data.prefetch)
    step_fn = compile_train_step(graphdef, tx, config, shardings, mesh)
    embedder = evaluate.Embedder(graphdef, mesh)
    writer = MetricWriter(workdir)
    start, total = int(state.step), config.train.num_steps
    last_logged: dict[str, float] = {}
    progress = tqdm(
        total=total, initial=start, desc="train", unit="step", disable=jax.process_index() != 0
    )
    tick, tick_step = time.perf_counter(), start
    for step in range(start + 1, total + 1):
        state, metrics = step_fn(state, next(batches))
        progress.update(1)
        is_last = step == total
        if step % config.train.log_every == 0 or is_last:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            metrics["examples_per_sec"] = (
                (step - tick_step) * config.train.batch_size / max(now - tick, 1e-9)
            )
            tick, tick_step = now, step
            writer.write(step, metrics)
            progress.set_postfix(
                loss=f"{metrics['loss']:.3f}", lr=f"{metrics['learning_rate']:.1e}"
            )
            last_logged = metrics
        val = None
        if step % config.train.eval_every == 0 or is_last:
            val = validate(embedder, state, data_dir, config, mesh)
            writer.write(step, val)
            progress.write(
                f"step {step}: val medR {val['val_medR_i2r']:.1f} / {val['val_medR_r2i']:.1f}  "
                f"R@1 {val['val_R@1_i2r']:.1f} / {val['val_R@1_r2i']:.1f} (i2r / r2i, "
                f"{val['val_pairs']:.0f} pairs)"
            )
        if step % config.train.checkpoint_every == 0 or is_last or val is not None:
            checkpointing.save(manager, step, state, batches.get_state(), metrics=val)
    progress.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    result: dict[str, Any] = {"train": last_logged}
    if config.train.eval_at_end:
        result["test"] = evaluate.evaluate_checkpoint(config, workdir, state=state, mesh=mesh)
    return result


def decoder_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains the cross decoder; refuses a loss weight without a decoder."""
    enabled = bool(config.model.get("cross_decoder", {}).get("enabled", False))
    weight = config.loss.get("cross_decoder", 0.0)
    if weight and not enabled:
        raise ValueError(
            f"loss.cross_decoder={weight} but model.cross_decoder.enabled is False; enable the "
            "decoder or set the weight to 0"
        )
    return enabled and bool(weight)


def train_iterator(
    data_dir: str, config: ml_collections.ConfigDict, info: dict, local_batch: int, mesh: Any
) -> Any:
    """This process's training batches: pairs (with the decoder targets when the decoder
    trains), zipped with a batch of recipes without photos when `train.text_only_batch_size`."""
    targets = None
    if decoder_enabled(config):
        targets = pipeline.DecoderTargets(
            data_dir, info["vocab_size"], config.data.max_decoder_tokens
        )
    paired = iter(
        pipeline.train_dataset(
            data_dir,
            config.data,
            batch_size=local_batch,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            decoder_targets=targets,
        )
    )
    text_batch = config.train.get("text_only_batch_size", 0)
    if not text_batch:
        return paired
    if not config.loss.recipe_ssl:
        raise ValueError(
            "train.text_only_batch_size > 0 needs the recipe SSL loss (loss.recipe_ssl)"
        )
    split = "train" + records.TEXT_ONLY_SUFFIX
    if not data_info.split_size(info, split):
        raise ValueError(
            f"train.text_only_batch_size={text_batch} but {data_dir!r} has no {split!r} split "
            "(recipes without photos); set --config.train.text_only_batch_size=0"
        )
    text_only = iter(
        pipeline.text_only_dataset(
            data_dir,
            config.data,
            batch_size=sharding.check_batch_size(text_batch, mesh),
            seed=config.seed,
            prefix=TEXT_ONLY_PREFIX,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    return pipeline.ZipIterator(paired, text_only)


def validate(
    embedder: evaluate.Embedder,
    state: state_lib.TrainState,
    data_dir: str,
    config: ml_collections.ConfigDict,
    mesh: Any,
) -> dict[str, float]:
    """Retrieval on the first `val_pairs` validation pairs, one bag, both directions."""
    image, recipe = embedder.embed_split(
        state, data_dir, "val", config, limit=config.train.val_pairs
    )
    i2r = evaluate.rank_metrics(evaluate.retrieval_ranks(image, recipe))
    r2i = evaluate.rank_metrics(evaluate.retrieval_ranks(recipe, image))
    out = {f"val_{k}_i2r": v for k, v in i2r.items()}
    out.update({f"val_{k}_r2i": v for k, v in r2i.items()})
    out[checkpointing.BEST_METRIC] = (i2r["R@1"] + r2i["R@1"]) / 2
    out["val_pairs"] = float(len(image))
    return out
