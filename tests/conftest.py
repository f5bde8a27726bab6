"""Test session set-up: 8 simulated CPU devices (before JAX initialises), a shared compilation
cache, and parsed absl flags (Grain's multiprocessing reads them)."""

import os
import tempfile

import jax
import pytest
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
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


def tiny_config(data_dir, **overrides):
    """configs/tnlbt.py:tiny on `data_dir` with flattened overrides ({"train.num_steps": 5})."""
    from configs import tnlbt

    c = tnlbt.get_config("tiny")
    c.data.dir = data_dir
    c.update_from_flattened_dict(overrides)
    return c


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """One short tiny TNLBT run on 8 simulated devices: (config, workdir, result). Tests that
    only read a trained checkpoint share it instead of training their own."""
    from xmodal.training.loop import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config(tiny_data)
    result = train_and_evaluate(config, workdir)
    return config, workdir, result
