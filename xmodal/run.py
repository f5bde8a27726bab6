"""The run context: everything a run sets up before it trains or is used, built once from
(config, workdir).

`Run.create` checks the config (`check_config`), resolves the data dir and reads its dataset info
(checking the prepared text limits and classes against the config), builds the mesh and the train
state's layout (graph definition, abstract state, its data-parallel or FSDP shardings). It then
offers the checkpoint manager, `init_state`, `restore` (best | latest | step, onto any device
count) and an `Embedder` built with the state's own shardings. `WORKDIR/config.json` is written
and read only here: the config as given plus a `run` record (the resolved data dir, the
vocabulary's size and fingerprint, the devices), so `Run.from_workdir` can reopen a trained run
with nothing else; the run keeps a copy of its tokenizer as `WORKDIR/tokenizer.json`. A run
reopened on other data (`--config.data.dir=NEW`: a new test set, a gallery) must share its
vocabulary (`check_vocabulary`), else the token ids would silently name other words.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from configs import common
from xmodal.data import decoder_targets, jsonio, records, tokenizer
from xmodal.data import info as data_info
from xmodal.data.builtin import dataset as builtin
from xmodal.data.pipeline import worker_count
from xmodal.models import gan, layers
from xmodal.models.dual_encoder import DualEncoder
from xmodal.runtime import checkpointing, distributed, sharding
from xmodal.runtime import state as state_lib
from xmodal.runtime.embed import BatchFn, Embedder

CONFIG_FILE = "config.json"  # WORKDIR/config.json: everything a run did
RUN_RECORD = "run"  # its key for what the run resolved (not config fields)
RECORD_KEYS = ("method", "data", "model", "train", "eval")  # what reopening a run reads
RECORD_HINT = (
    "it is the record training wrote: restore it from a copy, or move it aside and pass "
    "--config=configs/<method>.py[:preset] with the run's settings"
)
# Model fields that only matter at init, not for shapes.
INIT_ONLY_FIELDS = ("model.image_init", "model.init_from")
IMPORTED = "imported_from"  # run record key of a workdir written by xmodal.apps.import_checkpoint
# (config data field, dataset_info limits field): the prepared records hold at most this much.
TEXT_LIMITS = (
    ("max_title_tokens", "max_title_tokens"),
    ("max_ingredients", "max_ingredients"),
    ("max_instructions", "max_instructions"),
    ("max_ingredient_tokens", "max_tokens"),
    ("max_instruction_tokens", "max_tokens"),
)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuse switches that mean nothing for this config's method, naming the method.

    Every switch is a field of every method's config (configs/common.py); this says where one
    cannot apply: CCA has no training loop; H-T's text-only batches need its recipe SSL heads;
    the cross decoder's loss needs the decoder; a class head needs the dataset's classes.
    """
    method, t, m = config.method, config.train, config.model
    worker_count(config.data.num_workers)  # a bad value fails here, not in the first batch
    decoder_targets.check_order(config.data.decoder_order)
    if method == "cca":
        on = [
            name
            for name, value in (
                ("train.fsdp", t.fsdp),
                ("train.grad_accum_steps", t.grad_accum_steps > 1),
                ("train.text_only_batch_size", t.text_only_batch_size),
                ("model.cross_decoder.enabled", m.cross_decoder.enabled),
                ("model.image_init", m.image_init),
                ("model.init_from", m.init_from),
            )
            if value
        ]
        if on:
            raise ValueError(
                f"cca fits a closed-form map on fixed features and has no training loop: "
                f"{', '.join(on)} cannot apply (use cca.features_from=WORKDIR for trained ones)"
            )
        return
    if m.image_init and m.init_from:
        raise ValueError(
            f"{method}: model.image_init and model.init_from both set: init_from already gives "
            "the image encoder its weights; set one"
        )
    ssl = config.loss.recipe_ssl and m.recipe == "hierarchical" and m.ssl_head
    if t.text_only_batch_size and not ssl:
        raise ValueError(
            f"{method}: train.text_only_batch_size feeds H-T's recipe self-supervision, which "
            f"needs model.recipe='hierarchical', model.ssl_head and loss.recipe_ssl > 0 "
            f"(this config: {m.recipe!r}, {m.ssl_head!r}, {config.loss.recipe_ssl})"
        )
    if config.loss.cross_decoder and not m.cross_decoder.enabled:
        raise ValueError(
            f"{method}: loss.cross_decoder={config.loss.cross_decoder} but "
            "model.cross_decoder.enabled is False; enable the decoder or set the weight to 0"
        )
    if t.grad_accum_steps < 1:
        raise ValueError(f"{method}: train.grad_accum_steps must be >= 1, got {t.grad_accum_steps}")
    if config.adversarial.enabled:
        check_adversarial(config)


def check_adversarial(config: ml_collections.ConfigDict) -> None:
    """`config.adversarial`: at least one part on, values the networks and losses accept, and
    no gradient accumulation (the discriminators' step, batch-hard mining and BatchNorm's
    statistics are per global batch; GradCache's replay covers one player only)."""
    a, method = config.adversarial, config.method
    if not (a.align > 0 or a.translate > 0 or a.generated_triplet > 0):
        raise ValueError(
            f"{method}: adversarial.enabled but adversarial.align, .translate and "
            ".generated_triplet are all 0: set a weight, or disable it"
        )
    if config.train.grad_accum_steps > 1:
        raise ValueError(
            f"{method}: adversarial training does not accumulate gradients "
            f"(train.grad_accum_steps={config.train.grad_accum_steps}): the discriminators step "
            "on the global batch; lower train.batch_size, or shard it over more devices "
            "(train.fsdp)"
        )
    if a.critic_steps < 1:
        raise ValueError(f"{method}: adversarial.critic_steps must be >= 1, got {a.critic_steps}")
    stride, batch = a.generated_triplet_stride, config.train.batch_size
    if stride < 1 or batch % stride:
        raise ValueError(
            f"{method}: adversarial.generated_triplet_stride must be >= 1 and divide "
            f"train.batch_size ({batch}), got {stride}"
        )
    layers.check_choice("adversarial.ingredient_loss", a.ingredient_loss, gan.INGREDIENT_LOSSES)
    layers.check_choice("adversarial.image_size", a.image_size, gan.IMAGE_SIZES)
    if a.num_classes < 2:
        raise ValueError(
            f"{method}: adversarial.num_classes must count the dish classes and class 0 "
            f"(>= 2), got {a.num_classes}"
        )


def decoder_trains(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains the cross decoder (so batches carry its targets)."""
    return bool(config.model.cross_decoder.enabled and config.loss.cross_decoder)


def check_data(
    config: ml_collections.ConfigDict,
    info: dict[str, Any],
    data_dir: str,
    *,
    uses_labels: bool = True,
) -> None:
    """The config must ask for no more text than `prepare` kept, and a class head must match the
    dataset's classes when training reads the labels (out-of-range ones would give a silently
    wrong cross-entropy); a run reopened to embed data (`uses_labels=False`) reads none, so any
    labels (or none) will do."""
    limits = info.get("limits", {})
    over = [
        f"data.{ours}={config.data[ours]} > {limits[theirs]} ({theirs})"
        for ours, theirs in TEXT_LIMITS
        if theirs in limits and config.data[ours] > limits[theirs]
    ]
    if over:
        raise ValueError(
            f"{data_dir!r} was prepared with smaller text limits than this config asks for: "
            + "; ".join(over)
            + ". Lower them in the config, or prepare again with larger --max_* limits"
        )
    adversarial = config.adversarial
    found = info.get("num_classes") or 0
    classify = adversarial.enabled and adversarial.translate and uses_labels
    if classify and adversarial.num_classes < found:
        raise ValueError(
            f"adversarial.num_classes={adversarial.num_classes} but the dataset has {found} "
            "classes; set --config.adversarial.num_classes to match"
        )
    heads = config.model.num_classes
    if heads and uses_labels and heads != info.get("num_classes"):
        raise ValueError(
            f"model.num_classes={heads} but the dataset has {info.get('num_classes')} classes; "
            "set --config.model.num_classes to match"
        )


def resolve_data_dir(data_config: ml_collections.ConfigDict) -> str:
    """The run's data: the dir the config names (`data_info.locate`), else the built-in dataset,
    generated on first use by process 0 alone while the other processes wait (they then find it
    in the cache)."""
    named = data_info.locate(data_config)
    if named:
        return named
    first = jax.process_index() == 0
    data_dir = builtin.ensure_for_config(data_config) if first else None
    distributed.wait_for_all("built-in dataset ready")  # no collective: process 0 may take minutes
    return data_dir or builtin.ensure_for_config(data_config)


def read_record(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(config, run record) from WORKDIR/config.json; a clear error when it is missing or is
    not a config (truncated, hand-edited, another tool's file)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path!r} is missing: {workdir!r} is not a training workdir; pass --config too"
        )
    raw = jsonio.read_json(path, keys=RECORD_KEYS, hint=RECORD_HINT)
    flat = [k for k in RECORD_KEYS if k != "method" and not isinstance(raw[k], dict)]
    if flat or not isinstance(raw.get(RUN_RECORD, {}), dict):
        raise ValueError(f"{path}: {', '.join(flat) or RUN_RECORD} is not a section; {RECORD_HINT}")
    record = raw.pop(RUN_RECORD, {})
    return common.reopen(raw, path), record


def model_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields that fix the shapes of a checkpoint."""
    flat = {
        k: v
        for k, v in _flatten({"model": config.model.to_dict()}).items()
        if k not in INIT_ONLY_FIELDS
    }
    flat["data.image_size"] = config.data.image_size
    if flat["model.cross_decoder.enabled"]:
        flat["data.max_decoder_tokens"] = config.data.max_decoder_tokens
    else:  # a switched-off decoder adds no weights
        flat = {k: v for k, v in flat.items() if not k.startswith("model.cross_decoder.")}
    return flat


def _vocab_fingerprint(data_dir: str) -> str | None:
    """`tokenizer.fingerprint` of a data dir, None when it has no tokenizer (or is gone, or
    none is recorded: an imported checkpoint's)."""
    if not data_dir or not os.path.exists(os.path.join(data_dir, records.TOKENIZER_FILE)):
        return None
    return tokenizer.fingerprint(data_dir)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


@dataclasses.dataclass
class Run:
    """One run's set-up; see the module docstring."""

    config: ml_collections.ConfigDict
    workdir: str
    data_dir: str
    info: dict[str, Any]
    mesh: Mesh
    layout: state_lib.StateLayout
    _pairs: Embedder | None = dataclasses.field(default=None, repr=False)
    _vocabulary_checked: bool = dataclasses.field(default=False, repr=False)

    @classmethod
    def create(
        cls,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        mesh: Mesh | None = None,
        data_dir: str | None = None,
        uses_labels: bool = True,
    ) -> Run:
        """The run of `config` in `workdir` (which may not exist yet); `data_dir` overrides the
        config's data location (a run reopened on the data it recorded); `uses_labels=False`:
        the data is only embedded (see `check_data`)."""
        check_config(config)
        data_dir = data_dir or resolve_data_dir(config.data)
        info = data_info.load_info(data_dir)
        check_data(config, info, data_dir, uses_labels=uses_labels)
        mesh = mesh or sharding.make_mesh()
        layout = state_lib.StateLayout.create(config, info["vocab_size"], mesh)
        return cls(config, workdir, data_dir, info, mesh, layout)

    @classmethod
    def from_workdir(
        cls,
        workdir: str,
        config: ml_collections.ConfigDict | None = None,
        *,
        mesh: Mesh | None = None,
    ) -> Run:
        """A trained run reopened from WORKDIR/config.json (or with `config`, checked against
        it): its data unless `config.data.dir` or `config.data.tfds_dir` names other data, which
        must have the run's vocabulary (`check_vocabulary`)."""
        recorded, record = None, {}
        if config is None or os.path.exists(os.path.join(workdir, CONFIG_FILE)):
            recorded, record = read_record(workdir)
        config = config or recorded
        data_dir = None
        if not data_info.names_data(config.data) and os.path.isdir(record.get("data_dir", "")):
            data_dir = record["data_dir"]
        elif not data_info.names_data(config.data) and record.get(IMPORTED):
            raise ValueError(
                f"{workdir!r} holds a checkpoint imported from {record[IMPORTED]!r} with no "
                "data recorded: name the data to use, prepared with its vocabulary "
                "(--config.data.dir=DIR)"
            )
        run = cls.create(config, workdir, mesh=mesh, data_dir=data_dir, uses_labels=False)
        if recorded is not None:
            run.check_compatible(recorded, record)
        return run

    @property
    def graphdef(self) -> Any:
        return self.layout.graphdef

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    def write_record(self, config: ml_collections.ConfigDict | None = None, **extra: Any) -> None:
        """WORKDIR/config.json (process 0): the config (default: this run's) and what the run
        resolved, with `extra` in the run record."""
        if jax.process_index() != 0:
            return
        os.makedirs(self.workdir, exist_ok=True)
        record = (config or self.config).to_dict()
        record[RUN_RECORD] = {
            "data_dir": self.data_dir,
            "vocab_size": self.vocab_size,
            "vocab_fingerprint": _vocab_fingerprint(self.data_dir),
            "devices": self.mesh.size,
            "processes": jax.process_count(),
            **extra,
        }
        # Written whole, then renamed: the other processes of a job read them meanwhile.
        source = os.path.join(self.data_dir, records.TOKENIZER_FILE)
        # The vocabulary stays with the run: --tokenizer_from=WORKDIR.
        if self.data_dir and os.path.exists(source):
            kept = os.path.join(self.workdir, records.TOKENIZER_FILE)
            shutil.copyfile(source, kept + ".tmp")
            os.replace(kept + ".tmp", kept)
        jsonio.write_json(record, os.path.join(self.workdir, CONFIG_FILE), indent=2, default=str)

    def check_compatible(
        self,
        saved: ml_collections.ConfigDict | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Refuse to resume or use a checkpoint made by a different model, naming the fields, or
        on data of another vocabulary (`saved`, `record`: WORKDIR's recorded config and run
        record when already read)."""
        if saved is None:
            if not os.path.exists(os.path.join(self.workdir, CONFIG_FILE)):
                return
            saved, record = read_record(self.workdir)
        self.check_vocabulary(record)
        ours, theirs = model_fields(self.config), model_fields(saved)
        diffs = [
            f"{k}: checkpoint has {theirs.get(k)!r}, this run has {ours.get(k)!r}"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
        ]
        if diffs:
            raise ValueError(
                f"the checkpoints in {self.workdir!r} were made by another model configuration "
                f"({saved.method}:{saved.preset}):\n  " + "\n  ".join(diffs)
            )

    def check_vocabulary(self, record: dict[str, Any] | None = None) -> None:
        """Refuse data whose vocabulary is not the one the run in WORKDIR trained with (the same
        token id would name another word: silently wrong embeddings), naming both data dirs and
        both vocabulary sizes. Compares tokenizer fingerprints; for a run recorded before them,
        the tokenizer in its recorded data dir, else the vocabulary sizes. `record`: WORKDIR's
        run record when already read; none recorded (a fresh workdir): nothing to check."""
        if record is None:
            if not os.path.exists(os.path.join(self.workdir, CONFIG_FILE)):
                return
            _, record = read_record(self.workdir)
        self._vocabulary_checked = True
        if not record:
            return
        their_dir = str(record.get("data_dir", "?"))
        theirs = record.get("vocab_fingerprint") or _vocab_fingerprint(their_dir)
        ours = _vocab_fingerprint(self.data_dir)
        if theirs and ours:
            same = theirs == ours
        else:
            same = record.get("vocab_size", self.vocab_size) == self.vocab_size
        if same:
            return
        their_size = record.get("vocab_size", "?")
        alike = " (as many, but other words or ids)" if their_size == self.vocab_size else ""
        raise ValueError(
            f"vocabulary mismatch: the run in {self.workdir!r} was trained on {their_dir!r} "
            f"with a vocabulary of {their_size} tokens, but {self.data_dir!r} has another "
            f"vocabulary of {self.vocab_size} tokens{alike}: its token ids would name other "
            "words. Prepare that data with the run's vocabulary: python -m xmodal.data.prepare "
            f"--raw_dir=RAW --out_dir=DIR --tokenizer_from={self.workdir}"
        )

    def check_same_processes(self) -> None:
        """A resume must run on as many processes as the checkpoints were written by: each
        process saved its own data-iterator position, which another split cannot continue."""
        if not os.path.exists(os.path.join(self.workdir, CONFIG_FILE)):
            return
        _, record = read_record(self.workdir)
        if record.get(IMPORTED):
            raise ValueError(
                f"{self.workdir!r} holds a checkpoint imported from {record[IMPORTED]!r}, which "
                "has no training position to resume: start a new run from it with "
                f"--config.model.init_from={self.workdir} and another --workdir"
            )
        saved = record.get("processes", 1)
        if saved != jax.process_count():
            raise ValueError(
                f"the checkpoints in {self.workdir!r} were written by {saved} process(es), this "
                f"run has {jax.process_count()}: each process saved its own data position, so "
                f"resume with {saved} (evaluation and embedding work with any count)"
            )

    def manager(self, *, read_only: bool = False) -> ocp.CheckpointManager:
        return checkpointing.make_manager(
            self.workdir, keep=self.config.train.keep_checkpoints, read_only=read_only
        )

    def init_state(self) -> state_lib.TrainState:
        """A fresh state in its shardings; the model from `model.init_from`'s checkpoint (a run
        on data of its vocabulary), or the image encoder from `model.image_init`, if set."""
        source, stored = self.config.model.init_from, None
        if source:  # another run's (or an imported) model, checked before the init
            from xmodal.runtime import init_from

            dataclasses.replace(self, workdir=source, _pairs=None).check_vocabulary()
            stored = init_from.read_checked(source, self.layout.abstract)
        state = self.layout.init()
        if stored is not None:
            state = init_from.apply(state, stored, self.layout.shardings)
        if self.config.model.image_init:  # pretrained image encoder (timm / torchvision file)
            from xmodal.models.import_weights import init_image_encoder

            state = init_image_encoder(
                state, self.graphdef, self.config.model.image_init, self.layout.shardings
            )
        return state

    def restore(self, which: str | int | None = None) -> state_lib.TrainState:
        """The checkpoint `which` (best | latest | step; default `eval.checkpoint`) onto this
        run's devices and layout (training resumes through `checkpointing.restore_newest`)."""
        if not self._vocabulary_checked:  # a run made with `create` on a trained workdir
            self.check_vocabulary()
        manager = self.manager(read_only=True)
        try:
            step = checkpointing.select_step(manager, which or self.config.eval.checkpoint)
            return checkpointing.restore(manager, step, self.layout.abstract)
        finally:
            manager.close()

    def embedder(self, outputs: BatchFn = DualEncoder.embed_pairs) -> Embedder:
        """An embedder of `outputs`; the pair embedder is built (and compiled) once per run."""
        if outputs is not DualEncoder.embed_pairs:
            return Embedder(self.layout, self.mesh, outputs)
        if self._pairs is None:
            self._pairs = Embedder(self.layout, self.mesh)
        return self._pairs

    def embed_split(
        self, state: state_lib.TrainState, split: str, *, limit: int | None = None
    ) -> tuple[Any, Any]:
        """(image, recipe) unit-norm embeddings of the first `limit` pairs of `split`."""
        out = self.embedder().split(state, self.data_dir, split, self.config, limit=limit)
        return out["image"], out["recipe"]
