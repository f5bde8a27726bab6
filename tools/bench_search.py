"""Approximate (FAISS HNSW) vs exact (jitted top-k on device) search on random unit vectors:
recall@k of the approximate index against exact search, and latency per query.

    python tools/bench_search.py --n=200000 --dim=1024 --queries=200 --k=10
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from xmodal.apps import gallery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--ef_construction", type=int, default=80)
    p.add_argument("--ef_search", type=int, nargs="+", default=[32, 64, 128, 256])
    args = p.parse_args()
    rng = np.random.default_rng(0)
    # Clustered data (as real embeddings are), not uniform noise where every neighbour is equal.
    centres = rng.normal(size=(max(args.n // 100, 1), args.dim)).astype(np.float32)
    g = centres[rng.integers(len(centres), size=args.n)]
    g += 0.5 * rng.normal(size=g.shape).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[rng.choice(args.n, args.queries, replace=False)]
    q = q + 0.3 * rng.normal(size=q.shape).astype(np.float32) / np.sqrt(args.dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    exact = gallery.ExactSearch(g)
    exact.search(q[:1], args.k)  # compile
    t = time.perf_counter()
    _, truth = exact.search(q, args.k)
    batch_ms = 1e3 * (time.perf_counter() - t) / args.queries
    t = time.perf_counter()
    for x in q[:20]:
        exact.search(x[None], args.k)
    single_ms = 1e3 * (time.perf_counter() - t) / 20
    print(f"n={args.n} dim={args.dim} k={args.k} queries={args.queries}")
    print(f"exact   : {single_ms:8.2f} ms/query one at a time, {batch_ms:6.2f} ms/query batched")

    t = time.perf_counter()
    index = gallery.ApproxIndex(g, m=args.m, ef_construction=args.ef_construction)
    print(
        f"hnsw    : built in {time.perf_counter() - t:.1f} s (M={args.m}, "
        f"efConstruction={args.ef_construction})"
    )
    for ef in args.ef_search:
        index.search(q[:1], args.k, ef_search=ef)
        t = time.perf_counter()
        found = np.concatenate([index.search(x[None], args.k, ef_search=ef)[1] for x in q])
        ms = 1e3 * (time.perf_counter() - t) / args.queries
        rec = gallery.recall_at_k(found, truth)
        print(f"hnsw ef={ef:<4}: recall@{args.k} {rec:.3f}  {ms:6.2f} ms/query one at a time")


if __name__ == "__main__":
    main()
