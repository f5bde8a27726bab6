"""Imported PyTorch weights give the same forward pass in Flax as in PyTorch.

The references are small PyTorch models written here with timm's (ViT) and torchvision's
(ResNet) parameter names and semantics, since timm and torchvision have no CPU build in this
environment; where they are importable, the real classes are compared too.
"""

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="torch is needed to run the PyTorch reference models")
nn = torch.nn
F = torch.nn.functional

from xmodal.models import import_weights, resnet  # noqa: E402
from xmodal.models.vit import ViT  # noqa: E402


class TimmAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class TimmMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = TimmAttention(dim, heads), TimmMlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """timm.models.vision_transformer.VisionTransformer's names and forward (no head)."""

    def __init__(self, img, patch, dim, depth, heads, hidden, num_classes=10):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // patch) ** 2, dim) * 0.5)
        self.blocks = nn.ModuleList([TimmBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x, pos_embed=None):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = x + (self.pos_embed if pos_embed is None else pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


@nnx.jit
def _forward(model, x):
    return model(x)


def _randomise(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "weight" in name else 0.1))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)


def _save(sd, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def _rngs():
    # rbg keys: threefry's initialisers dominate XLA compile time on CPU.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


def _flax_vit(image_size, stem="patch"):
    return nnx.jit(
        lambda: ViT(
            image_size=image_size,
            patch_size=8,
            width=32,
            depth=2,
            num_heads=4,
            mlp_dim=64,
            stem=stem,
            rngs=_rngs(),
        )
    )()


def test_timm_vit_weights_give_the_same_forward_pass(tmp_path):
    torch.manual_seed(0)
    ref = TimmViT(32, 8, 32, 2, 4, 64).eval()
    _randomise(ref)
    path = _save(ref.state_dict(), tmp_path / "vit.safetensors")
    model = _flax_vit(32)
    unused = import_weights.load_image_encoder(model, path)
    assert unused == ["head.bias", "head.weight"]
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    tokens, pooled = _forward(model, x)
    np.testing.assert_allclose(np.asarray(tokens), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), want[:, 0], rtol=1e-4, atol=1e-4)

    # Another resolution: the position grid is resized bilinearly (class token kept).
    torch_pth = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), torch_pth)
    bigger = _flax_vit(48)
    import_weights.load_image_encoder(bigger, str(torch_pth))
    grid = ref.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False)
    pos = torch.cat([ref.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, 32)], 1)
    x48 = np.random.default_rng(1).normal(size=(2, 48, 48, 3)).astype(np.float32)
    with torch.no_grad():
        want48 = ref.forward_features(torch.from_numpy(x48).permute(0, 3, 1, 2), pos).numpy()
    np.testing.assert_allclose(np.asarray(_forward(bigger, x48)[0]), want48, rtol=1e-4, atol=1e-4)


def test_vit_import_names_what_does_not_fit(tmp_path):
    ref = TimmViT(32, 8, 48, 2, 4, 64)
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: weights have shape"):
        import_weights.load_image_encoder(_flax_vit(32), dict(ref.state_dict()))
    sd = {k: v.numpy() for k, v in TimmViT(32, 8, 32, 2, 4, 64).state_dict().items()}
    del sd["blocks.1.attn.qkv.weight"]
    with pytest.raises(KeyError, match=r"blocks\.1\.attn\.qkv\.weight"):
        import_weights.load_image_encoder(_flax_vit(32), sd)
    with pytest.raises(FileNotFoundError):
        import_weights.load_state_dict(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"patchify stem only.*ConvStem.*stem='patch'"):
        import_weights.load_image_encoder(_flax_vit(32, stem="conv"), sd)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("timm") is None, reason="timm is not installed here"
)
def test_real_timm_vit_matches(tmp_path):
    import timm

    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=0,
    ).eval()
    _randomise(ref)
    model = _flax_vit(32)
    import_weights.load_image_encoder(model, {k: v.numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(np.asarray(_forward(model, x)[0]), want, rtol=1e-4, atol=1e-4)


class TvBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: stride on the 3x3 conv)."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TvResNet(nn.Module):
    def __init__(self, blocks, width, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, n in enumerate(blocks):
            layer = []
            for j in range(n):
                layer.append(TvBottleneck(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
                cin = width * 2**i * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def test_torchvision_resnet_weights_give_the_same_forward_pass(tmp_path, monkeypatch):
    # A 1-1-1-1 bottleneck ResNet: every name kind of ResNet-50 (stem, conv1-3/bn1-3 of each
    # stage, downsample.0/.1, fc) at a fraction of the compile time.
    monkeypatch.setitem(resnet.RESNET_DEPTHS, 14, ("bottleneck", (1, 1, 1, 1)))
    torch.manual_seed(0)
    ref = TvResNet((1, 1, 1, 1), 8, 5)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ref.eval()
    path = _save(ref.state_dict(), tmp_path / "resnet.safetensors")
    model = nnx.jit(lambda: resnet.ResNet(depth=14, width=8, num_classes=5, rngs=_rngs()))()
    model.eval()
    unused = import_weights.load_image_encoder(model, path)
    assert all(u.endswith("num_batches_tracked") for u in unused)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    _, logits = _forward(model, x)
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
