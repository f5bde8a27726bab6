"""Import ImageNet-pretrained image encoders from PyTorch state dicts the user already has.

- ViT: timm `VisionTransformer` names (`patch_embed.proj`, `cls_token`, `pos_embed`,
  `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`; the classifier `head`
  is ignored). timm's fused `qkv` is split into `attn.{query, key, value}` per head; the
  position embedding is resized (bilinear over the patch grid, class token kept) when the model
  runs at another resolution.
- ResNet-50: torchvision names (`conv1`, `bn1`, `layerX.Y.convZ/bnZ/downsample.{0,1}`; `fc` is
  ignored), conv kernels OIHW -> HWIO, BatchNorm running statistics into the batch-stats
  variables.

Files (`load_state_dict`): `.safetensors` (numpy only), a `torch.save` file (`.pth`/`.pt`/`.bin`/
`.ckpt`; the zip format of torch >= 1.6 is read without torch, `xmodal.models.torch_zip`) or the
released H-T `.zip` (`model-best.ckpt`, with its `args.pkl` read by `load_released_args`).
Nothing is downloaded. `config.model.image_init = '/path/file.safetensors'` applies an import when
training starts from scratch (`init_image_encoder`).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from xmodal.data.safe_pickle import RestrictedUnpickler
from xmodal.models import torch_zip
from xmodal.models.vit import PatchEmbed

StateDict = Mapping[str, np.ndarray]
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
ARGS_NAME, CHECKPOINT_NAME = "args.pkl", "model-best.ckpt"  # the released H-T archive


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as float32/int numpy arrays (a 'state_dict'/'model' wrapper
    is unwrapped, a 'module.' prefix dropped).

    `.safetensors`; a `torch.save` file (`.pth`, `.pt`, `.bin`, `.ckpt`: the zip format is read
    without torch by `torch_zip`, an older one needs torch); or a released H-T `.zip`
    (`<name>/model-best.ckpt` beside `args.pkl`, see `released_archive_member`)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        obj: Any = dict(load_file(path))
    elif path.endswith(TORCH_SUFFIXES):
        obj = _load_torch_file(path)
    elif path.endswith(".zip"):
        with zipfile.ZipFile(path) as z, tempfile.TemporaryDirectory() as tmp:
            member = released_archive_member(z, CHECKPOINT_NAME, path)
            obj = _load_torch_file(z.extract(member, tmp))
    else:
        raise ValueError(
            f"{path!r}: expected a .safetensors, .pth/.pt/.bin/.ckpt or released .zip file"
        )
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            raise ValueError(f"{path!r}: {k!r} is a {type(v).__name__}, not a tensor")
        floating = np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16
        out[str(k).removeprefix("module.")] = v.astype(np.float32, copy=False) if floating else v
    return out


def _load_torch_file(path: str) -> Any:
    """A torch.save file's object with numpy arrays: torch-free for the zip format. A zip whose
    pickle names a global beyond a state dict's (an nn.Parameter, ...) is read by
    `torch.load(weights_only=True)` where torch is installed, and refused otherwise."""
    if torch_zip.is_torch_zip(path):
        try:
            return torch_zip.load(path)
        except ValueError as refused:
            if "refused global" not in str(refused) or importlib.util.find_spec("torch") is None:
                raise
            try:
                return _torch_load(path)
            except Exception:  # torch's weights_only refuses it too: say what ours refused
                raise refused from None
    if importlib.util.find_spec("torch") is None:
        raise ImportError(
            f"{path!r} is in PyTorch's pre-1.6 format, whose reading needs torch; or convert it "
            "to .safetensors where torch is"
        )
    return _torch_load(path)


def _torch_load(path: str) -> Any:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    obj = {k: v.detach() for k, v in obj.items()}
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}


def released_archive_member(z: zipfile.ZipFile, name: str, path: str) -> str:
    """The one member of a released H-T zip (`MODEL_NAME/args.pkl` and
    `MODEL_NAME/model-best.ckpt`, the README's layout) whose file name is `name`."""
    found = [n for n in z.namelist() if os.path.basename(n) == name]
    if len(found) != 1:
        raise ValueError(
            f"{path!r}: expected one {name} in the archive (the released layout "
            f"MODEL_NAME/{{{ARGS_NAME}, {CHECKPOINT_NAME}}}), found {found or 'none'}"
        )
    return found[0]


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """`numpy.dtype` as a pickle rebuilds it, for plain numbers only."""
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "biuf":
        raise ValueError(f"refused numpy dtype {spec!r}: only numbers are read")
    return dtype


def _numpy_scalar(dtype: np.dtype, data: bytes) -> Any:
    """A pickled numpy scalar (np.float64 in `args.best_loss`) as the Python number."""
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise ValueError("refused numpy scalar: only numbers are read")
    return np.frombuffer(data, dtype, count=1)[0].item()


# What the released H-T `args.pkl` (a pickled argparse.Namespace, src/train.py) may hold.
ARGS_GLOBALS: dict[tuple[str, str], Any] = {
    ("argparse", "Namespace"): argparse.Namespace,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


def load_released_args(path: str) -> dict[str, Any]:
    """The released H-T training arguments (`args.pkl`, or the one inside a released `.zip`)
    as a dict, read by `RestrictedUnpickler` allowing exactly `argparse.Namespace` and numpy's
    numbers: a forged file naming anything else is refused before it runs."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            data = z.read(released_archive_member(z, ARGS_NAME, path))
    else:
        with open(path, "rb") as f:
            data = f.read()
    try:
        what = "argparse.Namespace and numbers"
        args = RestrictedUnpickler(io.BytesIO(data), ARGS_GLOBALS, what=what).load()
    except Exception as e:  # nothing outside ARGS_GLOBALS runs: any failure is the bytes'
        raise ValueError(f"cannot read {path!r} as H-T's args.pkl: {e}") from None
    if not isinstance(args, argparse.Namespace):
        raise ValueError(f"{path!r}: args.pkl holds a {type(args).__name__}, not a Namespace")
    return dict(vars(args))


def _assign(var: Any, value: np.ndarray, name: str) -> None:
    if tuple(var[...].shape) != tuple(value.shape):
        raise ValueError(f"{name}: weights have shape {value.shape}, the model {var[...].shape}")
    var[...] = jnp.asarray(value, var[...].dtype)


def _take(sd: StateDict, name: str, used: set[str]) -> np.ndarray:
    if name not in sd:
        raise KeyError(f"the state dict has no {name!r}: is it the checkpoint of this network?")
    used.add(name)
    return np.asarray(sd[name], np.float32)


def resize_pos_embed(pos: np.ndarray, num_patches: int) -> np.ndarray:
    """[1, 1 + n, C] -> [1, 1 + num_patches, C]: the class token kept, the square patch grid
    resized bilinearly (timm's `resample_abs_pos_embed` with interpolation='bilinear')."""
    old = pos.shape[1] - 1
    if old == num_patches:
        return pos
    g_old, g_new = math.isqrt(old), math.isqrt(num_patches)
    if g_old**2 != old or g_new**2 != num_patches:
        raise ValueError(f"position grids must be square: {old} -> {num_patches} patches")
    grid = pos[0, 1:].reshape(g_old, g_old, -1)
    resized = jax.image.resize(grid, (g_new, g_new, grid.shape[-1]), "bilinear", antialias=False)
    return np.concatenate([pos[:, :1], np.asarray(resized).reshape(1, num_patches, -1)], axis=1)


def load_linear(layer: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    _assign(layer.kernel, _take(sd, f"{prefix}.weight", used).T, f"{prefix}.weight")
    if getattr(layer, "bias", None) is not None:  # a Linear without bias takes none
        _assign(layer.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")


def load_layer_norm(layer: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    _assign(layer.scale, _take(sd, f"{prefix}.weight", used), f"{prefix}.weight")
    _assign(layer.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")


def load_timm_vit(vit: Any, sd: StateDict) -> list[str]:
    """Copy a timm ViT state dict into `xmodal.models.vit.ViT` in place; returns the names of
    the state dict that were not used (the classifier head, ...)."""
    if not isinstance(vit.patch_embed, PatchEmbed):
        raise ValueError(
            "timm ViT weights fit the patchify stem only; this ViT has a "
            f"{type(vit.patch_embed).__name__}: set model.vit.stem='patch'"
        )
    used: set[str] = set()
    proj = vit.patch_embed.proj
    w = _take(sd, "patch_embed.proj.weight", used)  # [O, I, H, W]
    _assign(proj.kernel, w.transpose(2, 3, 1, 0), "patch_embed.proj.weight")
    _assign(proj.bias, _take(sd, "patch_embed.proj.bias", used), "patch_embed.proj.bias")
    _assign(vit.cls_token, _take(sd, "cls_token", used), "cls_token")
    pos = resize_pos_embed(_take(sd, "pos_embed", used), vit.num_patches)
    _assign(vit.pos_embed, pos, "pos_embed")
    for i, block in enumerate(vit.blocks):
        p = f"blocks.{i}"
        load_layer_norm(block.norm1, sd, f"{p}.norm1", used)
        load_layer_norm(block.norm2, sd, f"{p}.norm2", used)
        attn = block.attn
        heads, head_dim = attn.num_heads, attn.head_dim
        qkv_w = _take(sd, f"{p}.attn.qkv.weight", used)  # [3C, C], rows: q then k then v
        qkv_b = _take(sd, f"{p}.attn.qkv.bias", used)
        width = qkv_w.shape[1]
        for j, part in enumerate((attn.query, attn.key, attn.value)):
            wj = qkv_w[j * width : (j + 1) * width]  # [C_out, C_in]
            _assign(part.kernel, wj.T.reshape(width, heads, head_dim), f"{p}.attn.qkv[{j}]")
            bj = qkv_b[j * width : (j + 1) * width].reshape(heads, head_dim)
            _assign(part.bias, bj, f"{p}.attn.qkv.bias[{j}]")
        out_w = _take(sd, f"{p}.attn.proj.weight", used)  # [C, C]
        _assign(attn.out.kernel, out_w.T.reshape(heads, head_dim, width), f"{p}.attn.proj")
        _assign(attn.out.bias, _take(sd, f"{p}.attn.proj.bias", used), f"{p}.attn.proj.bias")
        load_linear(block.mlp.fc1, sd, f"{p}.mlp.fc1", used)
        load_linear(block.mlp.fc2, sd, f"{p}.mlp.fc2", used)
    load_layer_norm(vit.norm, sd, "norm", used)
    extra_blocks = [k for k in sd if k.startswith(f"blocks.{len(vit.blocks)}.")]
    if extra_blocks:
        raise ValueError(
            f"the state dict has more than {len(vit.blocks)} blocks; the model is shallower"
        )
    return sorted(set(sd) - used)


def load_batch_norm(bn: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    _assign(bn.scale, _take(sd, f"{prefix}.weight", used), f"{prefix}.weight")
    _assign(bn.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")
    _assign(bn.mean, _take(sd, f"{prefix}.running_mean", used), f"{prefix}.running_mean")
    _assign(bn.var, _take(sd, f"{prefix}.running_var", used), f"{prefix}.running_var")
    used.add(f"{prefix}.num_batches_tracked")


def load_conv(conv: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    w = _take(sd, f"{prefix}.weight", used)
    _assign(conv.kernel, w.transpose(2, 3, 1, 0), f"{prefix}.weight")
    if getattr(conv, "bias", None) is not None and f"{prefix}.bias" in sd:
        _assign(conv.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")


def load_torchvision_resnet(resnet: Any, sd: StateDict) -> list[str]:
    """Copy a torchvision ResNet state dict into `xmodal.models.resnet` (same names) in place;
    returns the unused names (the `fc` classifier)."""
    used: set[str] = set()
    load_conv(resnet.conv1, sd, "conv1", used)
    load_batch_norm(resnet.bn1, sd, "bn1", used)
    for li in range(1, 5):
        layer = getattr(resnet, f"layer{li}")
        for bi, block in enumerate(layer):
            p = f"layer{li}.{bi}"
            for ci in (1, 2, 3):
                if hasattr(block, f"conv{ci}"):
                    load_conv(getattr(block, f"conv{ci}"), sd, f"{p}.conv{ci}", used)
                    load_batch_norm(getattr(block, f"bn{ci}"), sd, f"{p}.bn{ci}", used)
            if getattr(block, "downsample", None) is not None:
                load_conv(block.downsample[0], sd, f"{p}.downsample.0", used)
                load_batch_norm(block.downsample[1], sd, f"{p}.downsample.1", used)
    if getattr(resnet, "fc", None) is not None and "fc.weight" in sd:
        load_linear(resnet.fc, sd, "fc", used)
    return sorted(set(sd) - used)


def load_image_encoder(encoder: Any, path_or_sd: str | StateDict) -> list[str]:
    """Import into a ViT (timm names) or a ResNet (torchvision names) by its type."""
    sd = load_state_dict(path_or_sd) if isinstance(path_or_sd, str) else path_or_sd
    if hasattr(encoder, "patch_embed"):
        return load_timm_vit(encoder, sd)
    if hasattr(encoder, "layer1"):
        return load_torchvision_resnet(encoder, sd)
    raise TypeError(f"no importer for {type(encoder).__name__}")


def replace_model(
    state: Any, graphdef: nnx.GraphDef, shardings: Any, load: Callable[[nnx.Module], Any]
) -> Any:
    """The train state with its model changed in place by `load(model)` (an importer), back in
    `shardings` (a fresh optimizer state stays valid: Adam's moments start at zero whatever the
    parameters); returns the state."""
    model = nnx.merge(graphdef, state.params, state.model_state)  # jax arrays: assignable
    load(model)
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    return jax.device_put(state.replace(params=params, model_state=model_state), shardings)


def init_image_encoder(state: Any, graphdef: nnx.GraphDef, path: str, shardings: Any) -> Any:
    """The train state with its image encoder replaced by the weights in `path`."""
    unused: list[str] = []
    load = lambda model: unused.extend(load_image_encoder(model.image_encoder, path))
    state = replace_model(state, graphdef, shardings, load)
    print(f"[xmodal] image encoder initialised from {path} (ignored: {', '.join(unused) or '-'})")
    return state
