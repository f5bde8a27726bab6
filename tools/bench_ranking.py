"""Time of the protocol's ranking (`xmodal.evaluate.retrieval_ranks`) on the default device.

    python tools/bench_ranking.py [--n=10000] [--dim=1024] [--repeats=5] [--out=FILE.json]

One call ranks N queries against N candidates (a 10k bag of the 10k protocol: 10^8 similarities)
from host embeddings, as evaluation does: the host-to-device copy, the similarity matmul and the
rank count. The first call (compilation) is reported apart; then the median of `repeats` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from xmodal import evaluate


def paired_embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows where query i is a noisy copy of candidate i (ranks spread, not all 1 or N)."""
    rng = np.random.default_rng(seed)
    candidates = rng.normal(size=(n, dim)).astype(np.float32)
    queries = candidates + 2.0 * rng.normal(size=(n, dim)).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit(queries), unit(candidates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench_ranking.json")
    args = p.parse_args()
    queries, candidates = paired_embeddings(args.n, args.dim)
    start = time.perf_counter()
    ranks = evaluate.retrieval_ranks(queries, candidates)
    first_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ranks = evaluate.retrieval_ranks(queries, candidates)  # returns host ranks: synchronous
        times.append(time.perf_counter() - start)
    metrics = evaluate.rank_metrics(ranks)
    result = {
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "n": args.n,
        "dim": args.dim,
        "first_call_s": first_s,
        "call_s_median": float(np.median(times)),
        "similarities_per_sec": args.n * args.n / float(np.median(times)),
        "medR": metrics["medR"],
        "R@1": metrics["R@1"],
    }
    print(
        f"{result['device_kind']} | ranking {args.n} x {args.n} (dim {args.dim}): "
        f"{1e3 * result['call_s_median']:.1f} ms per call (first {first_s:.2f} s), "
        f"medR {metrics['medR']:.0f}"
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
