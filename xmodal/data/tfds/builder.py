"""TensorFlow Datasets builder for Recipe1M (and any data in its raw layout, the built-in dataset's
included):

    python -m xmodal.data.tfds.builder --raw_dir=RAW --data_dir=DIR [prepare's options]

then train, evaluate and search with `--config.data.tfds_dir=DIR`, or read it anywhere with
`tfds.data_source("recipe1m", data_dir=DIR)` (Grain's random access; no TensorFlow needed).

A manual-download dataset: the raw layout is TFDS's `manual_dir`. The examples are `prepare`'s
records, not a second converter's: the builder runs `prepare.prepare` (the same raw reader, photo
repair in a process pool, tokenizer, limits and skips) into a staging folder under TFDS's
download dir, streams its shards split by split into TFDS's ArrayRecord writer
(`tfds_records.to_example`; the splits are prepare's: train, val, test and the text-only
`*_text`, each when it has recipes), and deletes the staging folder once the dataset is complete.
What prepare recorded (split counts, every skipped item with its reason, repaired photos by kind,
vocabulary size, class names, limits, photo size) is the dataset's metadata (`metadata.json`),
and its `tokenizer.json` is kept next to it.

Why stage instead of streaming prepare's records straight into TFDS: on Recipe1M the photo pass
takes hours and prepare resumes it shard by shard after an interruption (rerun the same command),
while TFDS's writer cannot resume (and stages examples on disk itself past 1 GB). The copy costs
reading the prepared shards once, and temporary disk of about the dataset's own size (the same
JPEG bytes) in DIR/downloads until the build completes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any, ClassVar

from array_record.python.array_record_data_source import ArrayRecordDataSource
from etils import epath

from xmodal.data import info as data_info
from xmodal.data import prepare, records
from xmodal.data.tfds import records as tfds_records

tfds = tfds_records.import_tfds()

STAGING_DIR = "xmodal-prepare"  # under TFDS's download dir, while a build runs
READ_CHUNK = 256  # staged records read at once
CITATION = """@inproceedings{salvador2017learning,
  title={Learning Cross-modal Embeddings for Cooking Recipes and Food Images},
  author={Salvador, Amaia and Hynes, Nicholas and Aytar, Yusuf and Marin, Javier and
          Ofli, Ferda and Weber, Ingmar and Torralba, Antonio},
  booktitle={CVPR},
  year={2017}
}"""


class Recipe1M(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """Recipe1M as `prepare` makes it: one example per recipe with its text, token ids and
    JPEG photos; `prepare_options` are `prepare.prepare`'s keyword arguments."""

    name = tfds_records.BUILDER_NAME
    # Where TFDS looks for a checksums file. Its own lookup, for a builder inside a package, asks
    # for the `importlib_resources` backport, which TFDS requires on Python < 3.9 only.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "prepare's records; its report as metadata; tokenizer.json."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    The manual dir is the raw Recipe1M layout (http://im2recipe.csail.mit.edu/, after
    registration): layer1.json, layer2.json, det_ingrs.json, optionally classes1M.pkl, and the
    photos under {train,val,test}/a/b/c/d/<image id>. Any data in that layout works the same way,
    e.g. the built-in synthetic dataset (python -m xmodal.data.builtin.dataset --out_dir=RAW).
    """

    def __init__(self, *, prepare_options: dict[str, Any] | None = None, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")  # TFRecord would need TensorFlow
        self._prepare_options = dict(prepare_options or {})
        if self._prepare_options.get("photo_resize", "xmodal") != "xmodal":
            raise ValueError(
                "photo_resize=torchvision stores PNG photos, and this dataset's image feature "
                "is JPEG: prepare a folder instead (python -m xmodal.data.prepare "
                "--photo_resize=torchvision)"
            )
        self._staging: str | None = None
        super().__init__(**kwargs)

    def _info(self) -> Any:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Recipes (title, ingredients, instructions, clean ingredient names, class) with "
                "their word ids and photos (JPEG, downscaled), as xmodal.data.prepare makes them."
            ),
            features=tfds_records.features(),
            homepage="http://im2recipe.csail.mit.edu/",
            citation=CITATION,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # prepare's record order: the first N pairs are the same
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, Any]]]:
        raw_dir = os.fspath(dl_manager.manual_dir)
        self._staging = os.path.join(os.fspath(dl_manager.download_dir), STAGING_DIR)
        info = prepare.prepare(raw_dir, self._staging, **self._prepare_options)
        self.info.metadata.update(info)
        shutil.copyfile(  # into the version folder being written (renamed when complete)
            os.path.join(self._staging, records.TOKENIZER_FILE),
            os.path.join(self.data_dir, records.TOKENIZER_FILE),
        )
        return {split: self._generate_examples(split) for split in info["splits"]}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, Any]]:
        """The staged records of `split` in order, streamed (never all in memory)."""
        assert self._staging is not None
        source = ArrayRecordDataSource(records.shard_paths(self._staging, split))
        for start in range(0, len(source), READ_CHUNK):
            indices = list(range(start, min(len(source), start + READ_CHUNK)))
            for i, data in zip(indices, source.__getitems__(indices), strict=True):
                yield i, tfds_records.to_example(records.decode_record(data))

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's, then the staging folder goes: it is kept only while a build may resume."""
        super().download_and_prepare(*args, **kwargs)
        if self._staging is not None and tfds_records.is_dataset_dir(self.data_dir):
            shutil.rmtree(self._staging, ignore_errors=True)


def build(raw_dir: str, data_dir: str, *, overwrite: bool = False, **prepare_options: Any) -> str:
    """Builds the dataset of `raw_dir` into `data_dir` (TFDS's layout) and returns its version
    folder; an existing complete build is kept unless `overwrite`."""
    builder = Recipe1M(data_dir=data_dir, prepare_options=prepare_options)
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        manual_dir=raw_dir,
        download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS,
    )
    builder.download_and_prepare(download_config=config)
    return builder.data_dir


def _define_flags() -> None:
    from absl import flags

    prepare.define_option_flags()
    flags.DEFINE_string("data_dir", None, "TFDS data dir: the dataset goes to DIR/recipe1m/<v>.")
    flags.DEFINE_bool("overwrite", False, "Rebuild a dataset already built in --data_dir.")
    flags.mark_flags_as_required(["raw_dir", "data_dir"])


def _main(argv: list[str]) -> None:
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)  # TFDS logs every shard it writes at INFO
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    existing = tfds_records.find_dataset(os.path.abspath(f.data_dir))
    if existing and not f.overwrite:
        print(f"{existing} is already built (pass --overwrite to build it again)")
        path = existing
    else:
        path = build(f.raw_dir, f.data_dir, overwrite=f.overwrite, **prepare.options_from_flags())
        print(prepare.summary(data_info.load_info(path), path))
    print(f"use it with --config.data.tfds_dir={f.data_dir}")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
