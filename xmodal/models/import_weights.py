"""Import ImageNet-pretrained image encoders from PyTorch state dicts the user already has.

- ViT: timm `VisionTransformer` names (`patch_embed.proj`, `cls_token`, `pos_embed`,
  `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`; the classifier `head`
  is ignored). timm's fused `qkv` is split into `attn.{query, key, value}` per head; the
  position embedding is resized (bilinear over the patch grid, class token kept) when the model
  runs at another resolution.
- ResNet-50: torchvision names (`conv1`, `bn1`, `layerX.Y.convZ/bnZ/downsample.{0,1}`; `fc` is
  ignored), conv kernels OIHW -> HWIO, BatchNorm running statistics into the batch-stats
  variables.

Files: `.safetensors` (via the `safetensors` package, numpy only) or `.pth`/`.pt` (needs torch).
Nothing is downloaded. `config.model.image_init = '/path/file.safetensors'` applies an import when
training starts from scratch (`init_image_encoder`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal.models.vit import PatchEmbed

StateDict = Mapping[str, np.ndarray]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict file as float32/int numpy arrays (a 'state_dict'/'model' wrapper
    is unwrapped, a 'module.' prefix dropped)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        sd = dict(load_file(path))
    elif path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path!r} needs torch; or convert it to .safetensors where torch is"
            ) from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
                obj = obj[key]
        sd = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in obj.items()}
    else:
        raise ValueError(f"{path!r}: expected a .safetensors or .pth/.pt file")
    return {k.removeprefix("module."): np.asarray(v) for k, v in sd.items()}


def _assign(var: Any, value: np.ndarray, name: str) -> None:
    if tuple(var[...].shape) != tuple(value.shape):
        raise ValueError(f"{name}: weights have shape {value.shape}, the model {var[...].shape}")
    var[...] = jnp.asarray(value, var[...].dtype)


def _take(sd: StateDict, name: str, used: set[str]) -> np.ndarray:
    if name not in sd:
        raise KeyError(f"the state dict has no {name!r} (is it a timm/torchvision checkpoint?)")
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


def _linear(layer: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    _assign(layer.kernel, _take(sd, f"{prefix}.weight", used).T, f"{prefix}.weight")
    _assign(layer.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")


def _layer_norm(layer: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
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
        _layer_norm(block.norm1, sd, f"{p}.norm1", used)
        _layer_norm(block.norm2, sd, f"{p}.norm2", used)
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
        _linear(block.mlp.fc1, sd, f"{p}.mlp.fc1", used)
        _linear(block.mlp.fc2, sd, f"{p}.mlp.fc2", used)
    _layer_norm(vit.norm, sd, "norm", used)
    extra_blocks = [k for k in sd if k.startswith(f"blocks.{len(vit.blocks)}.")]
    if extra_blocks:
        raise ValueError(
            f"the state dict has more than {len(vit.blocks)} blocks; the model is shallower"
        )
    return sorted(set(sd) - used)


def _batch_norm(bn: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    _assign(bn.scale, _take(sd, f"{prefix}.weight", used), f"{prefix}.weight")
    _assign(bn.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")
    _assign(bn.mean, _take(sd, f"{prefix}.running_mean", used), f"{prefix}.running_mean")
    _assign(bn.var, _take(sd, f"{prefix}.running_var", used), f"{prefix}.running_var")
    used.add(f"{prefix}.num_batches_tracked")


def _conv(conv: Any, sd: StateDict, prefix: str, used: set[str]) -> None:
    w = _take(sd, f"{prefix}.weight", used)
    _assign(conv.kernel, w.transpose(2, 3, 1, 0), f"{prefix}.weight")
    if getattr(conv, "bias", None) is not None and f"{prefix}.bias" in sd:
        _assign(conv.bias, _take(sd, f"{prefix}.bias", used), f"{prefix}.bias")


def load_torchvision_resnet(resnet: Any, sd: StateDict) -> list[str]:
    """Copy a torchvision ResNet state dict into `xmodal.models.resnet` (same names) in place;
    returns the unused names (the `fc` classifier)."""
    used: set[str] = set()
    _conv(resnet.conv1, sd, "conv1", used)
    _batch_norm(resnet.bn1, sd, "bn1", used)
    for li in range(1, 5):
        layer = getattr(resnet, f"layer{li}")
        for bi, block in enumerate(layer):
            p = f"layer{li}.{bi}"
            for ci in (1, 2, 3):
                if hasattr(block, f"conv{ci}"):
                    _conv(getattr(block, f"conv{ci}"), sd, f"{p}.conv{ci}", used)
                    _batch_norm(getattr(block, f"bn{ci}"), sd, f"{p}.bn{ci}", used)
            if getattr(block, "downsample", None) is not None:
                _conv(block.downsample[0], sd, f"{p}.downsample.0", used)
                _batch_norm(block.downsample[1], sd, f"{p}.downsample.1", used)
    if getattr(resnet, "fc", None) is not None and "fc.weight" in sd:
        _linear(resnet.fc, sd, "fc", used)
    return sorted(set(sd) - used)


def load_image_encoder(encoder: Any, path_or_sd: str | StateDict) -> list[str]:
    """Import into a ViT (timm names) or a ResNet (torchvision names) by its type."""
    sd = load_state_dict(path_or_sd) if isinstance(path_or_sd, str) else path_or_sd
    if hasattr(encoder, "patch_embed"):
        return load_timm_vit(encoder, sd)
    if hasattr(encoder, "layer1"):
        return load_torchvision_resnet(encoder, sd)
    raise TypeError(f"no importer for {type(encoder).__name__}")


def init_image_encoder(state: Any, graphdef: nnx.GraphDef, path: str, shardings: Any) -> Any:
    """The train state with its image encoder replaced by the weights in `path` (a fresh
    optimizer state stays valid: Adam's moments start at zero whatever the parameters)."""
    model = nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
    unused = load_image_encoder(model.image_encoder, path)
    _, params, model_state = nnx.split(model, nnx.Param, ...)
    print(f"[xmodal] image encoder initialised from {path} (ignored: {', '.join(unused) or '-'})")
    state = state.replace(params=params, model_state=model_state)
    return jax.device_put(state, shardings)
