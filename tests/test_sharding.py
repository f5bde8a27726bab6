"""Sharded train steps on 8 simulated devices against the single-device step; in-batch negatives
come from the global batch; the step compiles once."""

import jax
import numpy as np
import pytest
from step_fixtures import VOCAB, micro_config, random_batch

from configs import common
from xmodal import perf
from xmodal.runtime import sharding
from xmodal.runtime import state as state_lib
from xmodal.training import losses
from xmodal.training.step import compile_train_step

# pytest-xdist: one worker builds the single-device reference.
pytestmark = pytest.mark.xdist_group("sharding")

STEPS = 2


def run_steps(config, num_devices, batches):
    """Fresh state on a mesh of `num_devices`, `len(batches)` steps: (state, metrics, compiles
    per step, host params after each step)."""
    mesh = sharding.make_mesh(num_devices)
    layout = state_lib.StateLayout.create(config, VOCAB, mesh)
    state = layout.init()
    step_fn = compile_train_step(layout, config, mesh)
    metrics, compiles, params = [], [], []
    for host in batches:
        with perf.CompileCounter() as counter:
            state, m = step_fn(state, sharding.global_batch(host, mesh))
            metrics.append(jax.device_get(m))
        compiles.append(counter.count)
        params.append(jax.device_get(state.params))
    return state, metrics, compiles, params


@pytest.fixture(scope="module")
def batches():
    return [random_batch(micro_config(), seed=s) for s in range(STEPS)]


@pytest.fixture(scope="module")
def single_device(batches):
    _, metrics, _, params = run_steps(micro_config(), 1, batches)
    return params[-1], metrics


def assert_same_run(run, reference, lr):
    """Same loss and gradient norm at every step (step 2's loss depends on step 1's update, so it
    checks the updated parameters too), and parameters equal up to Adam's float-noise amplification:
    its early updates are ~lr * sign(g), so elements whose gradient is ~0 (e.g. attention key
    biases, exactly 0 in exact arithmetic) move by +-lr depending on summation order (layout):
    every element within Adam's bounded move, and at most 1% of them beyond rtol 1e-4."""
    params, metrics = run
    ref_params, ref_metrics = reference
    for m, r in zip(metrics, ref_metrics, strict=True):
        np.testing.assert_allclose(m["loss"], r["loss"], rtol=1e-5)
        np.testing.assert_allclose(m["grad_norm"], r["grad_norm"], rtol=1e-4)
    got, want = jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(ref_params)
    assert len(got) == len(want) > 20
    off = total = 0
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2 * lr * STEPS)  # Adam's bounded move
        off += int(np.sum(~np.isclose(a, b, rtol=1e-4, atol=1e-6)))
        total += a.size
    # A few (0.1% on 8 devices when written) differ beyond rtol 1e-4; a wrong reduction or layout
    # moves far more.
    assert off <= 0.01 * total, f"{off} of {total} parameters differ beyond rtol 1e-4"


def test_data_parallel_step_matches_single_device_and_compiles_once(batches, single_device):
    state, metrics, compiles, params = run_steps(micro_config(), 8, batches + batches[:1])
    assert compiles[0] >= 1 and compiles[1:] == [0, 0]  # three steps, one compilation
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    # Compared after the reference's STEPS steps (the third step only checks the compile count).
    assert_same_run((params[STEPS - 1], metrics[:STEPS]), single_device, micro_config().train.lr)


def test_fsdp_step_matches_single_device_and_shards_large_leaves(batches, single_device):
    config = micro_config(**{"train.fsdp": True, "train.fsdp_min_size": 512})
    state, metrics, compiles, _ = run_steps(config, 8, batches)
    assert compiles[1:] == [0]
    params = jax.tree.leaves(state.params)
    sharded = [p for p in params if not p.sharding.is_fully_replicated]
    # Every leaf at or above the size cut-off with a dimension divisible by 8 is split 8 ways.
    expected = [p for p in params if p.size >= 512 and any(d % 8 == 0 for d in p.shape)]
    assert sharded and len(sharded) == len(expected)
    for p in sharded:
        assert p.addressable_shards[0].data.size == p.size // 8
    mu = [m for m in jax.tree.leaves(state.opt_state) if getattr(m, "ndim", 0) >= 2]
    assert any(not m.sharding.is_fully_replicated for m in mu)  # Adam moments follow the params
    assert_same_run((state.params, metrics), single_device, config.train.lr)


def test_fsdp_spec_picks_largest_divisible_dim_and_replicates_small_leaves():
    P = jax.sharding.PartitionSpec
    min_size = common.base_config("x").train.fsdp_min_size  # 16,384 elements
    assert sharding.fsdp_spec((768, 3072), 8, min_size) == P(None, "data")
    assert sharding.fsdp_spec((3000, 768), 8, min_size) == P("data", None)
    assert sharding.fsdp_spec((3001, 768), 8, min_size) == P(None, "data")  # 3001 % 8 != 0
    assert sharding.fsdp_spec((3001, 769), 8, min_size) == P()  # nothing divides: replicated
    assert sharding.fsdp_spec((768,), 8, min_size) == P()  # small: replicated
    assert sharding.fsdp_spec((768, 3072), 1, min_size) == P()


def test_similarity_matrix_spans_the_global_batch(batches):
    """The loss on 8 devices equals a brute-force loss on all 16 pairs and differs from the mean
    of per-device losses (2 pairs each): negatives cross device boundaries."""
    config = micro_config()
    mesh = sharding.make_mesh(8)
    layout = state_lib.StateLayout.create(config, VOCAB, mesh)
    graphdef, state = layout.graphdef, layout.init()
    from flax import nnx

    def embed_and_loss(params, batch):
        model = nnx.merge(graphdef, params, state.model_state)
        out = model(batch)
        loss, _ = losses.bidirectional_triplet_loss(out["image"], out["recipe"], margin=0.3)
        return out["image"], out["recipe"], loss

    batch = sharding.global_batch(batches[0], mesh)
    image, recipe, loss = jax.jit(embed_and_loss)(state.params, batch)
    assert len(image.sharding.device_set) == 8 and not image.sharding.is_fully_replicated
    image, recipe = np.asarray(image, np.float64), np.asarray(recipe, np.float64)

    def brute(img, rec, margin=0.3):
        total = 0.0
        for q, c in ((img, rec), (rec, img)):
            costs = [
                max(0.0, margin + q[i] @ c[j] - q[i] @ c[i])
                for i in range(len(q))
                for j in range(len(q))
                if i != j
            ]
            active = sum(x > 0 for x in costs)
            total += sum(costs) / max(active, 1)
        return total

    np.testing.assert_allclose(float(loss), brute(image, recipe), rtol=1e-4)
    per_device = np.mean([brute(image[i : i + 2], recipe[i : i + 2]) for i in range(0, 16, 2)])
    assert abs(per_device - float(loss)) > 1e-3
