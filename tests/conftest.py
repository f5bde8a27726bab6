"""Test session set-up: 8 simulated CPU devices (before JAX initialises) and parsed absl flags
(Grain's multiprocessing reads them)."""

import jax
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)

if not flags.FLAGS.is_parsed():
    flags.FLAGS(["pytest"])
