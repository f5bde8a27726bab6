"""The one training loop: sharded jit-compiled step, donated state, Grain input, Orbax saves."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import optax
from flax import nnx
from tqdm import tqdm

from xmodal import evaluate
from xmodal.data import info as data_info
from xmodal.data import pipeline, schema
from xmodal.run import Run, decoder_trains
from xmodal.training import accumulate, checkpointing, losses, sharding
from xmodal.training import state as state_lib
from xmodal.training.metrics import MetricWriter


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
):
    """Pure step: (state, global batch) -> (new state, scalar metrics)."""
    loss_config = config.loss
    total_steps = config.train.num_steps
    schedule = state_lib.learning_rate_schedule(config.train)

    num_micro = config.train.grad_accum_steps
    accumulate_fn = accumulate.accumulated_grads(config.train.grad_accum)

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

        if num_micro > 1:  # batches larger than memory (xmodal.training.accumulate)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train to `config.train.num_steps`, resuming from WORKDIR's latest checkpoint if any.

    Returns the last logged metrics and, when `config.train.eval_at_end`, the test results.
    """
    run = Run.create(config, workdir)
    mesh = run.mesh
    run.check_compatible()
    manager = run.manager()
    latest = manager.latest_step()
    if latest is not None:
        run.check_same_processes()
    run.write_record()
    host_iter = train_iterator(run)
    if latest is not None:
        state = run.restore(latest, manager=manager, data_iterator=host_iter)
        if jax.process_index() == 0:
            print(f"resumed from {checkpointing.checkpoint_dir(workdir)} at step {latest}")
    else:
        state = run.init_state()

    batches = sharding.DevicePrefetcher(host_iter, mesh, config.data.prefetch)
    layout = run.layout
    step_fn = compile_train_step(layout.graphdef, layout.tx, config, layout.shardings, mesh)
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
            val = validate(run, state)
            writer.write(step, val)
            if jax.process_index() == 0:
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
        result["test"] = evaluate.evaluate_state(run, state)
    return result


def train_iterator(run: Run) -> Any:
    """This process's training batches: pairs (with the decoder targets when the decoder
    trains), zipped with a batch of recipes without photos when `train.text_only_batch_size`."""
    config, data_dir, info = run.config, run.data_dir, run.info
    targets = None
    if decoder_trains(config):
        targets = pipeline.DecoderTargets(
            data_dir, info["vocab_size"], config.data.max_decoder_tokens
        )
    paired = iter(
        pipeline.train_dataset(
            data_dir,
            config.data,
            batch_size=sharding.check_batch_size(config.train.batch_size, run.mesh),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            decoder_targets=targets,
        )
    )
    text_batch = config.train.text_only_batch_size
    if not text_batch:
        return paired
    split = "train" + schema.TEXT_ONLY_SUFFIX
    if not data_info.split_size(info, split):
        raise ValueError(
            f"train.text_only_batch_size={text_batch} but {data_dir!r} has no {split!r} split "
            "(recipes without photos); set --config.train.text_only_batch_size=0"
        )
    text_only = iter(
        pipeline.text_only_dataset(
            data_dir,
            config.data,
            batch_size=sharding.check_batch_size(text_batch, run.mesh),
            seed=config.seed,
            prefix=schema.TEXT_ONLY_PREFIX,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    return pipeline.ZipIterator(paired, text_only)


def validate(run: Run, state: state_lib.TrainState) -> dict[str, float]:
    """Retrieval on the first `val_pairs` validation pairs, one bag, both directions."""
    image, recipe = run.embed_split(state, "val", limit=run.config.train.val_pairs)
    out: dict[str, float] = {}
    for direction, (queries, candidates) in zip(
        schema.DIRECTIONS, ((image, recipe), (recipe, image)), strict=True
    ):
        tag = schema.DIRECTION_TAGS[direction]
        metrics = evaluate.rank_metrics(evaluate.retrieval_ranks(queries, candidates))
        out.update({f"val_{k}_{tag}": v for k, v in metrics.items()})
    out[checkpointing.BEST_METRIC] = (out["val_R@1_i2r"] + out["val_R@1_r2i"]) / 2
    out["val_pairs"] = float(len(image))
    return out
