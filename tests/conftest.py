"""Test session set-up: 8 simulated CPU devices (before JAX initialises), unoptimised CPU code, a
shared compilation cache, and parsed absl flags (Grain's multiprocessing reads them)."""

import fcntl
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from functools import partial

import jax
import pytest
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
# The suite is mostly compilation of tiny programs: LLVM's optimisation passes cost more than they
# save (a fifth of the CPU time of the adversarial tests). The same HLO, the same numbers within
# the tests' tolerances; the training subprocesses inherit it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()
# One compilation cache for the session and the training subprocesses it starts.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="xmodal-jax-cache-"))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

if not flags.FLAGS.is_parsed():
    flags.FLAGS(["pytest"])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny preset's built-in dataset, generated and prepared once per session."""
    from configs import tnlbt
    from xmodal.data.builtin import dataset as synthetic

    c = tnlbt.get_config("tiny")
    cache = tmp_path_factory.mktemp("cache")
    return synthetic.ensure_builtin_dataset(
        str(cache),
        num_recipes=c.data.synthetic.num_recipes,
        image_size=c.data.synthetic.image_size,
        seed=c.data.synthetic.seed,
    )


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    """A 300-recipe built-in dataset in the raw Recipe1M layout (data_fixtures.SMALL), written
    once per worker for every module that reads it (tests copy it before changing it)."""
    from data_fixtures import SMALL

    from xmodal.data.builtin import dataset as synthetic

    out = str(tmp_path_factory.mktemp("raw"))
    synthetic.write_raw_dataset(out, **SMALL, num_workers=2)
    return out


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a grouped test when `--dist=loadgroup` did not group it: the launcher tests would run
    on two workers at once (two one-node SLURMs on one host, two reference runs). pytest 9.2
    with pytest-xdist 3.8 groups nothing, silently."""
    grouping = getattr(item.config.option, "loadgroup", False)  # set on xdist's workers
    if grouping and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            "pytest-xdist's loadgroup did not group this test: this pytest and pytest-xdist pair "
            "groups nothing (pytest 9.2 with pytest-xdist 3.8); install pytest<9.2",
            pytrace=False,
        )


def tiny_config(data_dir, **overrides):
    """configs/tnlbt.py:tiny on `data_dir` with flattened overrides ({"train.num_steps": 5})."""
    from configs import tnlbt

    c = tnlbt.get_config("tiny")
    c.data.dir = data_dir
    c.update_from_flattened_dict(overrides)
    return c


def _session_folder(tmp_path_factory) -> pathlib.Path:
    """The folder every xdist worker of this session sees (a worker's own otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_once(folder: pathlib.Path, name: str, train: Callable[[str], dict]) -> tuple[str, dict]:
    """(workdir, record): `train(workdir)` run once per session in FOLDER/NAME by the first xdist
    worker to ask, under a file lock, while the others wait; its JSON record (the data dir it
    trained on, its result) is written when the run is done and read by every worker."""
    workdir, done = folder / name, folder / f"{name}.json"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            done.write_text(json.dumps(train(str(workdir))))
    return str(workdir), json.loads(done.read_text())


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """One short tiny TNLBT run on 8 simulated devices: (config, workdir, result). Tests that
    only read a trained checkpoint share it instead of training their own. Trained once per
    session (`_train_once`); each worker gets its own copy, as tests write into it (evaluations,
    predictions). The config names the data of the worker that trained it (the same data)."""
    from xmodal.training.loop import train_and_evaluate

    def train(workdir):
        result = train_and_evaluate(tiny_config(tiny_data), workdir)
        return {"data_dir": tiny_data, "result": result}

    shared, record = _train_once(_session_folder(tmp_path_factory), "trained", train)
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    shutil.copytree(shared, workdir)
    return tiny_config(record["data_dir"]), workdir, record["result"]


# The tiny runs of method_run: long enough for the loss to fall (test_methods.py), logged at every
# step, with one validation and one checkpoint at the end (test_run.py serves it).
METHOD_RUN_STEPS = 150


def _method_run_config(name, data_dir):
    from configs import adamine, ht, je

    config = {"ht": ht, "adamine": adamine, "je": je}[name].get_config("tiny")
    config.data.dir = data_dir
    config.update_from_flattened_dict(
        {
            "train.num_steps": METHOD_RUN_STEPS,
            "train.lr": 3e-3,
            "train.log_every": 1,
            "train.eval_every": METHOD_RUN_STEPS,
            "train.checkpoint_every": METHOD_RUN_STEPS,
            "train.val_pairs": 32,
            "train.eval_at_end": False,
        }
    )
    return config


@pytest.fixture(scope="session")
def method_run(tiny_data, tmp_path_factory):
    """`method_run(name) -> (config, workdir)`: one tiny run of method `name` (ht, adamine, je)
    through the real loop, trained once per session when a test first asks for it. The xdist
    workers share it through their session's temporary folder: the first to ask trains under a
    file lock, the others wait for it and read (its config names the data of the worker that
    trained it). Tests only read the run and write new files in its workdir.

    It trains on one device, as test_methods.py has always measured the loss curves: AdaMine's
    loss falls by only ~5-10% in 150 steps, about what float rounding moves it by (the same run
    on 8 devices ends at 0.99 of its start and fails the 5% check). Its checkpoint is served on
    all 8 devices (test_run.py)."""
    from xmodal.runtime import sharding
    from xmodal.training.loop import train_and_evaluate

    folder = _session_folder(tmp_path_factory)
    runs = {}

    def train(name, workdir):
        all_devices = sharding.make_mesh
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sharding, "make_mesh", lambda n=None: all_devices(n or 1))
            train_and_evaluate(_method_run_config(name, tiny_data), workdir)
        return {"data_dir": tiny_data}

    def get(name):
        if name not in runs:
            workdir, record = _train_once(folder, f"method_run-{name}", partial(train, name))
            runs[name] = _method_run_config(name, record["data_dir"]), workdir
        return runs[name]

    return get


@pytest.fixture(scope="session")
def acme_runs(tiny_data, tmp_path_factory):
    """acme:tiny (2 critic steps per step) started from a retrieval run's checkpoint (2 steps,
    adversarial off): 4 steps straight, and 2 steps then resumed to 4. {name: workdir};
    `straight` also serves the generation tests."""
    from configs import acme
    from xmodal.runtime import sharding
    from xmodal.training.loop import train_and_evaluate

    quick = {
        "train.log_every": 1,
        "train.eval_every": 100,
        "train.checkpoint_every": 2,
        "train.eval_at_end": False,
        "train.val_pairs": 16,
        # A constant learning rate, so that a run of 2 steps then resumed to 4 takes the 4-step
        # run's updates (a schedule's shape depends on train.num_steps) with the same program.
        "train.warmup_steps": 0,
        "train.min_lr_ratio": 1.0,
        "adversarial.critic_steps": 2,
    }

    def config(steps, **more):
        c = acme.get_config("tiny")
        c.data.dir = tiny_data
        c.update_from_flattened_dict({**quick, "train.num_steps": steps, **more})
        return c

    root = tmp_path_factory.mktemp("acme")
    runs = {name: str(root / name) for name in ("retrieval", "straight", "resumed")}
    all_devices = sharding.make_mesh  # one device: the step compiles in half the time
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharding, "make_mesh", lambda n=None: all_devices(n or 1))
        train_and_evaluate(config(2, **{"adversarial.enabled": False}), runs["retrieval"])
        warm = {"model.init_from": runs["retrieval"]}
        train_and_evaluate(config(4, **warm), runs["straight"])
        # Stopped at step 2: the straight run's workdir as it was then (its step-2 checkpoint,
        # the metrics logged up to step 2), resumed to step 4.
        shutil.copytree(runs["straight"], runs["resumed"])
        shutil.rmtree(os.path.join(runs["resumed"], "checkpoints", "4"))
        metrics = os.path.join(runs["resumed"], "metrics.jsonl")
        with open(metrics) as f:
            kept = [line for line in f if json.loads(line)["step"] <= 2]
        with open(metrics, "w") as f:
            f.writelines(kept)
        train_and_evaluate(config(4, **warm), runs["resumed"])
    runs["config"] = config(4)
    return runs
