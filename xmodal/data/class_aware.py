"""Class-aware batch composition for AdaMine (Carvalho et al., SIGIR 2018, Sec. 4.4): every batch
of 100 pairs holds 50 class-labelled pairs (so the semantic triplet loss has positives) and 50
drawn from the unlabelled ones.

`ClassAwareOrder` is a random-access sequence of record indices: position t lies in batch
t // B at slot t % B; the first k slots draw from the labelled pool, the rest from the unlabelled
pool, each pool walked in a fresh seeded permutation per pass. Being a pure function of
(seed, t), it is deterministic and Grain checkpoints it like any source (the iterator position).
Sampling labelled pairs uniformly keeps the training set's class distribution, as AdaMine asks.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from xmodal.data import records

# Positions in the endless order; far beyond any run (2**40 pairs), small enough for int64 maths.
ENDLESS = 2**40


def class_id_cache_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}_class_ids.npy")


def split_class_ids(data_dir: str, split: str, source: object) -> np.ndarray:
    """Class id of every record of `split` (0 = unlabelled), read once and cached next to the
    shards as `<split>_class_ids.npy` (written atomically; safe with several processes)."""
    path = class_id_cache_path(data_dir, split)
    if os.path.exists(path):
        ids = np.load(path)
        if len(ids) == len(source):
            return ids
    ids = np.fromiter(
        (records.decode_record(source[i])["class_id"] for i in range(len(source))),
        dtype=np.int32,
        count=len(source),
    )
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    try:
        np.save(tmp, ids)
        os.replace(tmp, path)
    except OSError:  # read-only data dir: keep the ids in memory only
        pass
    return ids


class ClassAwareOrder:
    """Record indices such that each batch of `batch_size` has `labelled_per_batch` labelled."""

    def __init__(
        self, class_ids: np.ndarray, *, batch_size: int, labelled_per_batch: int, seed: int
    ):
        if not 0 <= labelled_per_batch <= batch_size:
            raise ValueError(f"labelled_per_batch {labelled_per_batch} not in [0, {batch_size}]")
        self.labelled = np.flatnonzero(class_ids > 0)
        self.unlabelled = np.flatnonzero(class_ids <= 0)
        if labelled_per_batch and not len(self.labelled):
            raise ValueError("class-aware batches need labelled recipes; this split has none")
        if labelled_per_batch < batch_size and not len(self.unlabelled):
            raise ValueError(
                "class-aware batches need unlabelled recipes for the rest of each batch; this "
                "split has none (set data.labelled_fraction=1.0)"
            )
        self.batch_size = batch_size
        self.k = labelled_per_batch
        self.seed = seed

    def __len__(self) -> int:
        return ENDLESS

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of live passes per pool
    def _permutation(self, pool: int, cycle: int) -> np.ndarray:
        n = len(self.labelled) if pool == 0 else len(self.unlabelled)
        return np.random.default_rng((self.seed, pool, cycle)).permutation(n)

    def __getitem__(self, t: int) -> int:
        batch, slot = divmod(int(t), self.batch_size)
        if slot < self.k:
            pool, members, j = 0, self.labelled, batch * self.k + slot
        else:
            size = self.batch_size - self.k
            pool, members, j = 1, self.unlabelled, batch * size + slot - self.k
        cycle, r = divmod(j, len(members))
        return int(members[self._permutation(pool, cycle)[r]])


class OrderedRecords:
    """Random-access records in a given order: position t -> source[order[t]]."""

    def __init__(self, source: object, order: ClassAwareOrder):
        self.source = source
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, t: int) -> object:
        return self.source[int(self.order[t])]
