"""Released checkpoint import (issue 25 item 3): the torch-free reader of `torch.save` files,
the restricted `args.pkl` reader, `python -m xmodal.apps.import_checkpoint` end to end (then
`xmodal.main --mode=embed|eval` without --config), its key and shape errors, and
`model.init_from`.

The released key layout's own mapping lives in `xmodal.models.released_ht` and is tested with the
reference vectors; here a mapping of this file (`_load_released_style`) stands in for it: every
parameter and batch statistic of a tiny H-T model under a released-style prefix.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from xmodal.apps import import_checkpoint as importer
from xmodal.models import import_weights, torch_zip
from xmodal.runtime import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORD_TABLE = importer.WORD_TABLE
PREFIXES = {  # xmodal module -> the released one it stands for in this test's mapping
    "image_encoder": "image_encoder.backbone",
    "image_proj": "image_encoder.fc",
    "recipe_encoder": "text_encoder",
    "recipe_proj": "merger_recipe",
    "ssl_heads": "projector_recipes",
}


def _released_name(path: str) -> str:
    if path == "recipe_encoder.word_embed.embedding":
        return WORD_TABLE
    head, _, rest = path.partition(".")
    return f"{PREFIXES[head]}.{rest}"


def _arrays(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {
        ".".join(map(str, path)): v
        for path, v in nnx.iter_graph(model)
        if isinstance(v, nnx.Param | nnx.BatchStat)
    }


def _export(model: nnx.Module) -> dict[str, np.ndarray]:
    return {_released_name(k): np.asarray(v[...]) for k, v in _arrays(model).items()}


def _load_released_style(model: nnx.Module, state_dict) -> None:
    """This test's stand-in for `released_ht.load_into`, with its errors."""
    wanted = {_released_name(k): v for k, v in _arrays(model).items()}
    missing, unexpected = (
        sorted(set(wanted) - set(state_dict)),
        sorted(set(state_dict) - set(wanted)),
    )
    if missing or unexpected:
        raise KeyError(f"missing keys: {missing}; unexpected keys: {unexpected}")
    for key, var in wanted.items():
        if tuple(state_dict[key].shape) != tuple(var[...].shape):
            raise ValueError(
                f"{key}: the checkpoint has shape {tuple(state_dict[key].shape)}, "
                f"the model {tuple(var[...].shape)}"
            )
        var[...] = jnp.asarray(state_dict[key], var[...].dtype)


# --- torch.save files without torch ---------------------------------------------------------


def test_torch_free_reader_equals_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {
        "contiguous": base,
        "transposed": base.t(),  # non-contiguous, shares base's storage
        "strided": base[1:5, 2:9:3],  # offset and step
        "broadcast": torch.randn(3, 1).expand(3, 4),  # stride 0
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "half": torch.randn(4, 5).half()[:, 1:],
        "bfloat16": torch.randn(3, 4).bfloat16().t(),
        "int64": torch.arange(7),
        "int32": torch.arange(-3, 3, dtype=torch.int32),
        "int8": torch.arange(-4, 4, dtype=torch.int8),
        "uint8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
    }
    obj = {"state_dict": dict(tensors), "epoch": 3, "note": "x"}
    path = str(tmp_path / "model-best.ckpt")
    torch.save(obj, path)
    ours, ref = torch_zip.load(path), torch.load(path, weights_only=True)
    assert ours["epoch"] == 3 and ours["note"] == "x"
    for name, tensor in ref["state_dict"].items():
        got = ours["state_dict"][name]
        if tensor.dtype == torch.bfloat16:
            assert got.dtype == ml_dtypes.bfloat16
            got, want = got.astype(np.float32), tensor.float().numpy()
        else:
            want = tensor.numpy()
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # load_state_dict: the wrapper unwrapped, floats as float32, ints kept
    sd = import_weights.load_state_dict(path)
    assert sd["bfloat16"].dtype == np.float32 and sd["int64"].dtype == np.int64
    np.testing.assert_array_equal(sd["half"], ref["state_dict"]["half"].float().numpy())


def test_parameters_beyond_a_state_dict_are_read_by_torch_where_it_is(tmp_path):
    """A file of nn.Parameters names torch._utils._rebuild_parameter: outside what the reader
    allows, so torch.load(weights_only=True) reads it (as before the torch-free reader)."""
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "params.pth")
    weight = torch.nn.Parameter(torch.randn(2, 3))
    torch.save({"w": weight}, path)
    with pytest.raises(ValueError, match=r"refused global torch\._utils\._rebuild_parameter"):
        torch_zip.load(path)
    np.testing.assert_array_equal(
        import_weights.load_state_dict(path)["w"], weight.detach().numpy()
    )


def _forged_torch_file(path: str, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


class _System:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_forged_torch_file_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = str(tmp_path / "model-best.ckpt")
    _forged_torch_file(path, pickle.dumps({"w": _System(str(target))}, protocol=2))
    with pytest.raises(ValueError, match=r"model-best\.ckpt.*refused global (posix|os|nt)\.system"):
        import_weights.load_state_dict(path)
    assert not target.exists()


def test_a_view_outside_its_storage_is_refused(tmp_path):
    """A forged size that would read past its storage is an error, not a read."""
    path = str(tmp_path / "big.ckpt")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "archive/data.pkl", _state_dict_pickle({"w": ("FloatStorage", "0", 4, (100,), (1,))})
        )
        z.writestr("archive/data/0", np.zeros(4, np.float32).tobytes())
    with pytest.raises(ValueError, match=r"reaches element 99 of a storage of 4"):
        torch_zip.load(path)


# --- args.pkl --------------------------------------------------------------------------------

RELEASED_ARGS = dict(
    backbone="vit_base_patch16_224",
    output_size=1024,
    hidden_recipe=512,
    tf_n_heads=4,
    tf_n_layers=2,
    imsize=224,
    resize=256,
    lr=1e-4,
    model_name="vit_ssl",
    freeze_backbone=False,
    curr_epoch=57,
    best_loss=np.float64(-0.614),  # np.mean of recalls * -1 in src/train.py
)


def _write_args(path: str, **changes) -> None:
    with open(path, "wb") as f:
        pickle.dump(argparse.Namespace(**{**RELEASED_ARGS, **changes}), f, protocol=3)


def test_released_args_are_read_and_name_the_preset(tmp_path):
    path = str(tmp_path / "args.pkl")
    _write_args(path)
    args = import_weights.load_released_args(path)
    assert args["backbone"] == "vit_base_patch16_224" and args["curr_epoch"] == 57
    assert args["best_loss"] == -0.614 and type(args["best_loss"]) is float
    c = importer.config_from_released_args(args)
    assert (c.preset, c.model.image, c.model.vit.width, c.model.vit.depth) == (
        "vit",
        "vit",
        768,
        12,
    )
    assert (c.model.embed_dim, c.model.text.width, c.model.text.num_heads) == (1024, 512, 4)
    small = importer.config_from_released_args({**args, "backbone": "resnet50", "tf_n_layers": 3})
    assert (small.preset, small.model.image, small.model.resnet.depth) == ("r50", "resnet", 50)
    assert small.model.text.depth == 3
    with pytest.raises(ValueError, match=r"backbone 'inception_v3'.*--config="):
        importer.config_from_released_args({**args, "backbone": "inception_v3"})


def test_forged_args_pkl_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = str(tmp_path / "args.pkl")
    with open(path, "wb") as f:
        pickle.dump(argparse.Namespace(backbone=_System(str(target))), f)
    with pytest.raises(ValueError, match=r"args\.pkl.*refused global (posix|os|nt)\.system"):
        import_weights.load_released_args(path)
    assert not target.exists()


# --- the released .zip -----------------------------------------------------------------------


def _save_like_torch(state_dict: dict[str, np.ndarray], path: str) -> None:
    """torch.save of the state dict where torch is, else the same zip written here (the reader
    under test reads both; the equality with torch.load is the test above)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.save(
            {k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()}, path
        )
        return
    from collections import OrderedDict

    kinds = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}
    with zipfile.ZipFile(path, "w") as z:
        out = OrderedDict()
        for i, (k, v) in enumerate(state_dict.items()):
            v = np.array(v, order="C")
            z.writestr(f"archive/data/{i}", v.tobytes())
            strides = tuple(s // v.itemsize for s in v.strides)
            out[k] = (kinds[v.dtype], str(i), v.size, v.shape, strides)
        z.writestr("archive/data.pkl", _state_dict_pickle(out))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def _state_dict_pickle(entries) -> bytes:
    """Protocol-2 opcodes of an OrderedDict of tensors, as torch.save writes them."""
    import struct

    def string(s: str) -> bytes:
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def integer(x: int) -> bytes:
        return b"J" + struct.pack("<i", x)

    def tup(xs) -> bytes:
        return b"(" + b"".join(integer(x) for x in xs) + b"t"

    body = b"\x80\x02ccollections\nOrderedDict\n)R("
    for key, (kind, index, numel, shape, strides) in entries.items():
        storage = b"(" + string("storage") + f"ctorch\n{kind}\n".encode() + string(index)
        storage += string("cpu") + integer(numel) + b"tQ"
        body += string(key) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + integer(0)
        body += tup(shape) + tup(strides) + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
    return body + b"u."


def test_released_zip_reads_like_its_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    sd = {"a.weight": rng.normal(size=(3, 4)).astype(np.float32), "n": np.arange(5, dtype=np.int64)}
    folder = tmp_path / "vit_ssl"
    folder.mkdir()
    _save_like_torch(sd, str(folder / "model-best.ckpt"))
    _write_args(str(folder / "args.pkl"))
    archive = str(tmp_path / "vit_ssl.zip")
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("args.pkl", "model-best.ckpt"):
            z.write(folder / name, f"vit_ssl/{name}")
    for path in (archive, str(folder / "model-best.ckpt")):
        got = import_weights.load_state_dict(path)
        assert sorted(got) == sorted(sd)
        for k in sd:
            np.testing.assert_array_equal(got[k], sd[k])
            assert got[k].dtype == sd[k].dtype
    assert importer.released_args(archive)["model_name"] == "vit_ssl"
    assert importer.released_args(str(folder / "model-best.ckpt"))["tf_n_heads"] == 4


# --- the command end to end ------------------------------------------------------------------

SMALL = {"model.text.depth": 1}  # passed as --config.a.b=v overrides


def _tiny(data_dir: str, **overrides):
    from configs import ht

    c = ht.get_config("tiny")
    c.data.dir = data_dir
    c.update_from_flattened_dict({**SMALL, **overrides})
    return c


@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory):
    """A tiny H-T model whose weights no fresh run makes (a fresh state, every float moved), its
    run and state, and its weights exported to released-style keys in a model-best.ckpt. (The
    config stays the one the other tests init: its compiled init is reused from the cache.)"""
    from xmodal.run import Run

    run = Run.create(_tiny(tiny_data), str(tmp_path_factory.mktemp("source")))
    state = run.layout.init()
    moved = lambda x: x * 1.5 + 0.01 if jnp.issubdtype(x.dtype, jnp.floating) else x
    state = state.replace(
        params=jax.tree.map(moved, state.params), model_state=jax.tree.map(moved, state.model_state)
    )
    model = nnx.merge(run.graphdef, state.params, state.model_state)
    path = str(tmp_path_factory.mktemp("released") / "model-best.ckpt")
    _save_like_torch(_export(model), path)
    return run, state, path


@pytest.fixture(scope="module")
def imported(source, tiny_data, tmp_path_factory):
    _, _, path = source
    workdir = str(tmp_path_factory.mktemp("imported") / "w")
    argv = [f"--checkpoint={path}", f"--workdir={workdir}", "--config=configs/ht.py:tiny"]
    argv += [f"--config.data.dir={tiny_data}", *(f"--config.{k}={v}" for k, v in SMALL.items())]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        importer.main(argv, load_into=_load_released_style)
    finally:
        os.chdir(cwd)
    return workdir


def test_imported_run_embeds_as_the_model_and_evaluates_without_config(source, imported, tiny_data):
    from xmodal import evaluate

    run, state, _ = source
    image, recipe = run.embed_split(state, "test")
    # `xmodal.main` with no --config: the imported workdir's config.json
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "xmodal.main", f"--workdir={imported}", "--mode=embed"]
    done = subprocess.run(
        [*cmd, f"--config.data.dir={tiny_data}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = np.load(os.path.join(imported, "embeddings_test.npz"))
    assert int(out["step"]) == 0
    np.testing.assert_allclose(out["image"], image, atol=1e-5)
    np.testing.assert_allclose(out["recipe"], recipe, atol=1e-5)
    results = evaluate.evaluate_checkpoint(None, imported)
    assert results["step"] == 0 and results["n_pairs"] == len(image)
    ours = evaluate.evaluate_state(run, state)
    assert results["image_to_recipe"] == ours["image_to_recipe"]


def test_main_without_config_needs_a_recorded_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "xmodal.main", f"--workdir={tmp_path}", "--mode=train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "--config is required" in done.stderr


def test_import_errors_name_the_keys_and_shapes(source, tmp_path, capsys):
    run, state, _ = source
    sd = _export(nnx.merge(run.graphdef, state.params, state.model_state))
    del sd["merger_recipe.bias"]
    sd["text_encoder.extra.weight"] = np.zeros(3, np.float32)
    sd["projector_recipes.title_to_ingredients.fc1.kernel"] = np.zeros((5, 32), np.float32)

    def attempt(state_dict, name):
        path = str(tmp_path / f"{name}.ckpt")
        _save_like_torch(state_dict, path)
        argv = [
            f"--checkpoint={path}",
            f"--workdir={tmp_path / name}",
            "--config=configs/ht.py:tiny",
        ]
        argv += [f"--config.{k}={v}" for k, v in SMALL.items()]
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            with pytest.raises(SystemExit) as e:
                importer.main(argv, load_into=_load_released_style)
        finally:
            os.chdir(cwd)
        assert e.value.code == 2
        return capsys.readouterr().err

    err = attempt(sd, "keys")
    assert "missing keys: ['merger_recipe.bias']" in err
    assert "unexpected keys: ['text_encoder.extra.weight']" in err
    del sd["text_encoder.extra.weight"]
    sd["merger_recipe.bias"] = np.zeros(32, np.float32)
    err = attempt(sd, "shapes")
    assert "projector_recipes.title_to_ingredients.fc1.kernel" in err and "(5, 32)" in err
    assert "(32, 32)" in err
    assert not os.path.exists(tmp_path / "shapes" / "config.json")


def test_an_import_without_data_asks_for_it(source, tmp_path):
    from xmodal.run import Run

    _, _, path = source
    workdir = str(tmp_path / "w")
    config = _tiny("")  # no data named: the vocabulary from the released word table
    importer.import_checkpoint(path, workdir, config, load_into=_load_released_style)
    with pytest.raises(ValueError, match=r"imported from .* no data recorded.*--config\.data\.dir"):
        Run.from_workdir(workdir)


def test_a_checkpoint_without_args_needs_a_config(source, tmp_path, capsys):
    _, _, path = source
    with pytest.raises(SystemExit):
        importer.main([f"--checkpoint={path}", f"--workdir={tmp_path / 'w'}"])
    assert "no args.pkl beside" in capsys.readouterr().err


def test_imported_workdir_refuses_to_resume_training(imported, tiny_data):
    from xmodal.training.loop import train_and_evaluate

    with pytest.raises(ValueError, match=r"imported from .*--config\.model\.init_from="):
        train_and_evaluate(_tiny(tiny_data), imported)


# --- model.init_from -------------------------------------------------------------------------


def test_init_from_starts_at_the_imported_weights(source, imported, tiny_data, tmp_path):
    from xmodal.run import Run

    _, want, _ = source
    run = Run.create(_tiny(tiny_data, **{"model.init_from": imported}), str(tmp_path / "new"))
    state = run.init_state()
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stats = lambda s: [x for x in jax.tree.leaves(s.model_state) if x.dtype == jnp.float32]
    assert stats(state)  # the ResNet's batch statistics
    for a, b in zip(stats(state), stats(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fresh = Run.create(_tiny(tiny_data), str(tmp_path / "fresh")).init_state()
    pairs = zip(jax.tree.leaves(fresh.params), jax.tree.leaves(state.params), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)  # the weights came from the import


def test_init_from_reads_a_checkpoint_written_on_other_devices(source, imported, tmp_path):
    """The import wrote on 8 devices; a one-device process reads the same model arrays."""
    _, want, _ = source
    script = (
        "import sys, numpy as np\n"
        "from xmodal.runtime import init_from, sharding\n"
        "rep = sharding.replicated(sharding.make_mesh(1))\n"
        "step, arrays = init_from.read_model_arrays(sys.argv[1], rep)\n"
        "np.savez(sys.argv[2], **{k: v for k, v in arrays.items() if k.startswith('params.')})\n"
    )
    out = str(tmp_path / "arrays.npz")
    done = subprocess.run(
        [sys.executable, "-c", script, imported, out], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(out)
    leaves = jax.tree_util.tree_flatten_with_path(want.params)[0]
    assert len(leaves) > 10
    for path, value in leaves:
        np.testing.assert_array_equal(got["params." + checkpointing.path_name(path)], value)


def test_init_from_another_architecture_names_the_first_difference(imported, tiny_data, tmp_path):
    from xmodal.run import Run
    from xmodal.runtime import sharding

    config = _tiny(tiny_data, **{"model.init_from": imported, "model.text.mlp_dim": 48})
    # one device: the checkpoint (written on 8) is read onto another topology
    run = Run.create(config, str(tmp_path / "new"), mesh=sharding.make_mesh(1))
    first = r"params\.recipe_encoder\.ingredients\.encoder\.blocks\.0\.mlp\.fc1\.bias"
    shapes = r"checkpoint has \(64,\), this model has \(48,\)"
    with pytest.raises(ValueError, match=rf"another architecture: {first}: {shapes}"):
        run.init_state()


def test_init_from_is_not_a_model_field_and_excludes_image_init(imported, tiny_data):
    from xmodal.run import check_config, model_fields

    config = _tiny(tiny_data, **{"model.init_from": imported})
    assert "model.init_from" not in model_fields(config)
    config.model.image_init = "vit.safetensors"
    with pytest.raises(ValueError, match=r"model\.image_init and model\.init_from"):
        check_config(config)
