"""Reference PyTorch TNLBT (ViT + H-T + triplet + H-T recipe SSL losses), for benchmarks only.

Written to match xmodal's JAX model layer for layer (same widths, depths, pre-LN blocks with
separate q/k/v projections, learned positions, masked means, float32 projections and losses), so
both frameworks do the same FLOPs on the same shapes; `tests/test_torch_reference.py` checks the
parameter counts agree. Not a dependency of the package. Attention is
`F.scaled_dot_product_attention` (PyTorch picks flash / memory-efficient kernels on GPU), which
is what a careful PyTorch user would write; timm is not needed.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

COMPONENTS = ("title", "ingredients", "instructions")
SSL_PAIRS = tuple(itertools.permutations(COMPONENTS, 2))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Block(nn.Module):
    """Pre-LN transformer block (xmodal.models.layers.EncoderBlock)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, w = x.shape
        h = self.norm1(x)

        def heads(p: nn.Linear) -> torch.Tensor:
            return p(h).view(b, t, self.heads, w // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            heads(self.query), heads(self.key), heads(self.value), attn_mask=mask
        )
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, w)))
        y = self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x)))))
        return x + self.drop(y)


class Encoder(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        mask = None
        if valid is not None:  # fully padded rows attend everywhere (finite, ignored later)
            empty = ~valid.any(-1, keepdim=True)
            mask = (valid | empty)[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = valid.unsqueeze(-1).float()
    return ((x.float() * m).sum(1) / m.sum(1).clamp(min=1.0)).to(x.dtype)


class ViT(nn.Module):
    def __init__(self, image_size: int, patch: int, width: int, depth: int, heads: int, mlp: int):
        super().__init__()
        n = (image_size // patch) ** 2
        self.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, width) * 0.02)
        self.encoder = Encoder(width, depth, heads, mlp)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        return self.encoder(x + self.pos_embed)[:, 0]


class Pooled(nn.Module):
    """Learned positions + transformer + masked mean (H-T's SingleTransformerEncoder)."""

    def __init__(self, width, depth, heads, mlp, dropout, max_len=64):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.encoder = Encoder(width, depth, heads, mlp, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.drop(x + self.pos_embed[: x.shape[1]])
        return masked_mean(self.encoder(x, valid), valid)


class HierarchicalRecipeEncoder(nn.Module):
    def __init__(self, vocab: int, width, depth, heads, mlp, dropout):
        super().__init__()
        self.word_embed = nn.Embedding(vocab, width)

        def pooled() -> Pooled:
            return Pooled(width, depth, heads, mlp, dropout)

        self.title, self.ingredients, self.ingredients_merge = pooled(), pooled(), pooled()
        self.instructions, self.instructions_merge = pooled(), pooled()
        self.merge = nn.Linear(3 * width, width)

    def _sentences(self, tokens, words, sentences):
        b, s, t = tokens.shape
        flat = tokens.reshape(b * s, t)
        valid = flat != 0
        sent = words(self.word_embed(flat), valid).reshape(b, s, -1)
        return sentences(sent, valid.any(-1).reshape(b, s))

    def forward(self, title, ingredients, instructions) -> dict[str, torch.Tensor]:
        feats = {
            "title": self.title(self.word_embed(title), title != 0),
            "ingredients": self._sentences(ingredients, self.ingredients, self.ingredients_merge),
            "instructions": self._sentences(
                instructions, self.instructions, self.instructions_merge
            ),
        }
        feats["recipe"] = self.merge(torch.cat([feats[c] for c in COMPONENTS], -1))
        return feats


class DualEncoder(nn.Module):
    """TNLBT dual encoder with H-T's six linear SSL heads g_ab."""

    def __init__(self, config: Any, vocab_size: int):
        super().__init__()
        v, t, d = config.model.vit, config.model.text, config.model.embed_dim
        self.image_encoder = ViT(
            config.data.image_size, v.patch_size, v.width, v.depth, v.num_heads, v.mlp_dim
        )
        self.recipe_encoder = HierarchicalRecipeEncoder(
            vocab_size, t.width, t.depth, t.num_heads, t.mlp_dim, t.dropout
        )
        self.image_proj = nn.Linear(v.width, d)
        self.recipe_proj = nn.Linear(t.width, d)
        self.ssl_heads = nn.ModuleDict(
            {f"{a}_to_{b}": nn.Linear(t.width, t.width) for a, b in SSL_PAIRS}
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        images = (batch["image"].permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        pooled = self.image_encoder(images)
        feats = self.recipe_encoder(batch["title"], batch["ingredients"], batch["instructions"])
        with torch.autocast(images.device.type, enabled=False):  # f32 heads, as in xmodal
            image = F.normalize(self.image_proj(pooled.float()), dim=-1)
            recipe = F.normalize(self.recipe_proj(feats["recipe"].float()), dim=-1)
            ssl = {
                (a, b): (
                    F.normalize(self.ssl_heads[f"{a}_to_{b}"](feats[a].float()), dim=-1),
                    F.normalize(feats[b].float(), dim=-1),
                )
                for a, b in SSL_PAIRS
            }
        return {"image": image, "recipe": recipe, "ssl": ssl}


def triplet_loss(q: torch.Tensor, c: torch.Tensor, margin: float) -> torch.Tensor:
    """In-batch triplet costs reduced over violating triplets (training.losses, 'violating')."""
    sims = q @ c.T
    costs = (margin + sims - sims.diagonal()[:, None]).clamp(min=0)
    costs = costs.masked_fill(torch.eye(len(q), dtype=torch.bool, device=q.device), 0.0)
    return costs.sum() / (costs > 0).sum().clamp(min=1)


def tnlbt_loss(outputs: dict[str, Any], loss_config: Any) -> torch.Tensor:
    m = loss_config.margin  # a constant margin (dynamic margins are not in the reference)
    m = m if isinstance(m, (int, float)) else m.start
    loss = loss_config.triplet * (
        triplet_loss(outputs["image"], outputs["recipe"], m)
        + triplet_loss(outputs["recipe"], outputs["image"], m)
    )
    ssl = [triplet_loss(p, t, m) for p, t in outputs["ssl"].values()]
    return loss + loss_config.recipe_ssl * sum(ssl) / len(ssl)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
