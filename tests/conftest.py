"""Test session set-up: 8 simulated CPU devices (before JAX initialises), a shared compilation
cache, and parsed absl flags (Grain's multiprocessing reads them)."""

import os
import tempfile

import jax
from absl import flags

jax.config.update("jax_num_cpu_devices", 8)
# One compilation cache for the session and the training subprocesses it starts.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="xmodal-jax-cache-"))
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

if not flags.FLAGS.is_parsed():
    flags.FLAGS(["pytest"])
