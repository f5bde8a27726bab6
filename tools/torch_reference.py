"""Reference PyTorch TNLBT (ViT + H-T + triplet + H-T recipe SSL losses, and the extensions:
dynamic margins and the cross decoder), for benchmarks only.

Written to match xmodal's JAX model layer for layer (same widths, depths, blocks with separate
q/k/v projections wired as the config says — pre-LN / GELU by default, or the released H-T's
post-LN / ReLU / eps 1e-5 / attention-probability dropout / no final norm (`model.text.block`,
..., `model.vit.block`, ...) — learned positions, masked means, the heads' tanh and merge as
configured, float32 projections and losses), so
both frameworks do the same FLOPs on the same shapes and train the same objective: the config's
triplet reduction, margin schedule (constant, linear, adaptive) and cross decoder (teacher-forced
cross-entropy over image tokens + the recipe embedding, recipe tokens dropped per example).
`tests/test_bench_train.py` checks the parameter counts agree and the margins equal the JAX ones.
Not a dependency of the package. Attention is `F.scaled_dot_product_attention` (PyTorch picks
flash / memory-efficient kernels on GPU), which is what a careful PyTorch user would write; timm
is not needed.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xmodal.data.decoder_targets import decoder_vocab_size
from xmodal.data.schema import COMPONENTS, DECODER_TOKENS, IMAGE

SSL_PAIRS = tuple(itertools.permutations(COMPONENTS, 2))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (xmodal.models.layers), with
    dropout on the attention probabilities while training when `dropout` > 0."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        b, t, w = x.shape

        def heads(p: nn.Linear, y: torch.Tensor) -> torch.Tensor:
            return p(y).view(b, y.shape[1], self.heads, w // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            heads(self.query, x),
            heads(self.key, kv),
            heads(self.value, kv),
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(a.transpose(1, 2).reshape(b, t, w))


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
PRE_LN = dict(block="pre_ln", activation="gelu", norm_eps=1e-6, final_norm=True)


def layout_of(section: Any) -> dict[str, Any]:
    """A config section's block fields (model.text, model.vit): xmodal.models.layers.BlockLayout."""
    keys = ("block", "activation", "norm_eps", "final_norm", "attention_dropout")
    return {k: section[k] for k in keys}


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.activation(self.fc1(x))))


class Block(nn.Module):
    """Transformer block (xmodal.models.layers.EncoderBlock): pre-LN, or post-LN as PyTorch's
    `nn.TransformerEncoderLayer` (the released H-T's recipe encoder)."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        block: str = "pre_ln",
        activation: str = "gelu",
        norm_eps: float = 1e-6,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.post_ln = block == "post_ln"
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads, attention_dropout)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_dim, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.post_ln:
            x = self.norm1(x + self.drop(self.attn(x, x, mask)))
            return self.norm2(x + self.drop(self.mlp(x)))
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block (xmodal.models.cross_decoder.DecoderBlock): causal self-attention,
    cross-attention to the memory, MLP."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(width, eps=1e-6), Attention(width, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(width, eps=1e-6), Attention(width, heads)
        self.norm3, self.mlp = nn.LayerNorm(width, eps=1e-6), Mlp(width, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, is_causal=True))
        x = x + self.drop(self.cross_attn(self.norm2(x), memory, memory_mask))
        return x + self.drop(self.mlp(self.norm3(x)))


class CrossDecoder(nn.Module):
    """TNLBT's cross decoder (xmodal.models.cross_decoder.CrossDecoder): generates the recipe's
    ingredients and title from the image tokens followed by the recipe embedding projected to
    `recipe_tokens` memory tokens, dropped per example with probability `recipe_drop`."""

    def __init__(self, vocab: int, image_width: int, embed_dim: int, dec: Any, max_len: int):
        super().__init__()
        self.recipe_tokens, self.recipe_drop = dec.recipe_tokens, dec.recipe_drop
        self.token_embed = nn.Embedding(vocab, dec.width)
        self.pos_embed = nn.Parameter(torch.randn(max_len, dec.width) * 0.02)
        self.image_proj = nn.Linear(image_width, dec.width)
        self.recipe_proj = nn.Linear(embed_dim, dec.recipe_tokens * dec.width)
        self.blocks = nn.ModuleList(
            DecoderBlock(dec.width, dec.num_heads, dec.mlp_dim, dec.dropout)
            for _ in range(dec.depth)
        )
        self.norm = nn.LayerNorm(dec.width, eps=1e-6)
        self.head = nn.Linear(dec.width, vocab)

    def forward(
        self, tokens: torch.Tensor, image_tokens: torch.Tensor, recipe: torch.Tensor
    ) -> torch.Tensor:
        b = tokens.shape[0]
        keep = torch.ones(b, dtype=torch.bool, device=tokens.device)
        if self.training and self.recipe_drop:
            keep = torch.rand(b, device=tokens.device) >= self.recipe_drop
        rec = self.recipe_proj(recipe).view(b, self.recipe_tokens, -1)
        rec = rec * keep[:, None, None].to(rec.dtype)
        memory = torch.cat([self.image_proj(image_tokens), rec.to(image_tokens.dtype)], 1)
        valid = torch.cat([keep.new_ones(b, image_tokens.shape[1]), keep[:, None].expand(
            b, self.recipe_tokens)], 1)  # fmt: skip
        x = self.token_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, memory, valid[:, None, None, :])
        return self.head(self.norm(x)).float()


class Encoder(nn.Module):
    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        *,
        final_norm: bool = True,
        norm_eps: float = 1e-6,
        **block: Any,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_dim, dropout, norm_eps=norm_eps, **block) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=norm_eps) if final_norm else nn.Identity()

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
    def __init__(
        self, image_size: int, patch: int, width: int, depth: int, heads: int, mlp: int, **layout
    ):
        super().__init__()
        n = (image_size // patch) ** 2
        self.proj = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, width) * 0.02)
        self.encoder = Encoder(width, depth, heads, mlp, **(layout or PRE_LN))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """-> all output tokens [B, 1 + N, width] (the CLS token first)."""
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        return self.encoder(x + self.pos_embed)


class Pooled(nn.Module):
    """Learned positions + transformer + masked mean (H-T's SingleTransformerEncoder)."""

    def __init__(self, width, depth, heads, mlp, dropout, max_len=64, **layout):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.encoder = Encoder(width, depth, heads, mlp, dropout, **(layout or PRE_LN))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.drop(x + self.pos_embed[: x.shape[1]])
        return masked_mean(self.encoder(x, valid), valid)


class HierarchicalRecipeEncoder(nn.Module):
    """`merge_linear`: Linear(3W -> W) over the components (xmodal's default), else their
    concatenation (the released H-T, whose one Linear(3W -> D) is the dual encoder's head)."""

    def __init__(
        self, vocab: int, width, depth, heads, mlp, dropout, max_len=64, merge_linear=True, **layout
    ):
        super().__init__()
        self.word_embed = nn.Embedding(vocab, width)

        def pooled() -> Pooled:
            return Pooled(width, depth, heads, mlp, dropout, max_len, **layout)

        self.title, self.ingredients, self.ingredients_merge = pooled(), pooled(), pooled()
        self.instructions, self.instructions_merge = pooled(), pooled()
        self.merge = nn.Linear(3 * width, width) if merge_linear else nn.Identity()
        self.width = width if merge_linear else 3 * width

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
    """TNLBT dual encoder with H-T's six linear SSL heads g_ab; each head's Linear followed by
    tanh when `model.image_head_activation` / `model.recipe_head_activation` say so."""

    def __init__(self, config: Any, vocab_size: int):
        super().__init__()
        v, t, d = config.model.vit, config.model.text, config.model.embed_dim
        self.image_encoder = ViT(
            config.data.image_size,
            v.patch_size,
            v.width,
            v.depth,
            v.num_heads,
            v.mlp_dim,
            **layout_of(v),
        )
        self.recipe_encoder = HierarchicalRecipeEncoder(
            vocab_size,
            t.width,
            t.depth,
            t.num_heads,
            t.mlp_dim,
            t.dropout,
            t.max_len,
            t.merge_linear,
            **layout_of(t),
        )
        tanh = {"none": nn.Identity, "tanh": nn.Tanh}
        self.image_act = tanh[config.model.image_head_activation]()
        self.recipe_act = tanh[config.model.recipe_head_activation]()
        self.image_proj = nn.Linear(v.width, d)
        self.recipe_proj = nn.Linear(self.recipe_encoder.width, d)
        self.ssl_heads = nn.ModuleDict(
            {f"{a}_to_{b}": nn.Linear(t.width, t.width) for a, b in SSL_PAIRS}
        )
        dec = config.model.cross_decoder
        self.cross_decoder = None
        if dec.enabled:
            self.cross_decoder = CrossDecoder(
                decoder_vocab_size(vocab_size), v.width, d, dec, config.data.max_decoder_tokens
            )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        images = (batch[IMAGE].permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        tokens = self.image_encoder(images)
        pooled = tokens[:, 0]
        feats = self.recipe_encoder(*(batch[c] for c in COMPONENTS))
        with torch.autocast(images.device.type, enabled=False):  # f32 heads, as in xmodal
            image = F.normalize(self.image_act(self.image_proj(pooled.float())), dim=-1)
            recipe = self.recipe_act(self.recipe_proj(feats["recipe"].float()))
            recipe = F.normalize(recipe, dim=-1)
            ssl = {
                (a, b): (
                    F.normalize(self.ssl_heads[f"{a}_to_{b}"](feats[a].float()), dim=-1),
                    F.normalize(feats[b].float(), dim=-1),
                )
                for a, b in SSL_PAIRS
            }
        out = {"image": image, "recipe": recipe, "ssl": ssl}
        if self.cross_decoder is not None and DECODER_TOKENS in batch:
            # teacher forcing (cross_decoder.teacher_forcing): the inputs; the loss takes the labels
            inputs = batch[DECODER_TOKENS][:, :-1]
            out["decoder_logits"] = self.cross_decoder(inputs, tokens, recipe)
        return out


def triplet_costs(q: torch.Tensor, c: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """[B, B] hinge costs with the diagonal zeroed (training.losses.triplet_costs)."""
    sims = q.float() @ c.float().T
    costs = (margin + sims - sims.diagonal()[:, None]).clamp(min=0)
    return costs.masked_fill(torch.eye(len(q), dtype=torch.bool, device=q.device), 0.0)


def reduce_costs(costs: torch.Tensor, reduction: str) -> torch.Tensor:
    """training.losses.reduce_costs: violating, hardest, mean or batch_mean."""
    if reduction == "violating":
        return costs.sum() / (costs > 0).sum().clamp(min=1)
    if reduction == "hardest":
        return costs.max(1).values.mean()
    if reduction == "mean":
        n = len(costs)
        return costs.sum() / max(n * (n - 1), 1)
    if reduction == "batch_mean":
        return costs.mean()
    raise ValueError(f"unknown triplet reduction {reduction!r}")


def margins(
    settings: Any,
    image: torch.Tensor,
    recipe: torch.Tensor,
    step: torch.Tensor | float,
    total_steps: int,
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The (image->recipe, recipe->image) margins (training.losses.retrieval_margins)."""
    kind, start = settings.kind, settings.start
    if kind == "constant":
        return start, start
    if kind == "linear":
        frac = (
            torch.as_tensor(step, dtype=torch.float32) / max(settings.steps or total_steps, 1)
        ).clamp(0.0, 1.0)
        m = start + (settings.end - start) * frac
        return m, m
    if kind == "adaptive":

        def adaptive(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            costs = triplet_costs(q.detach(), c.detach(), start)
            active = (costs > 0).float().sum() / max(len(q) * (len(q) - 1), 1)
            return settings.min + (settings.max - settings.min) * (1.0 - active)

        return adaptive(image, recipe), adaptive(recipe, image)
    raise ValueError(f"unknown margin kind {kind!r}")


def tnlbt_loss(
    outputs: dict[str, Any],
    batch: dict[str, torch.Tensor],
    loss_config: Any,
    step: torch.Tensor | float,
    total_steps: int,
) -> torch.Tensor:
    """training.losses.compute_losses for TNLBT's terms: triplets with the margin schedule,
    H-T's recipe SSL (two-directional) at the base margin, and the cross decoder's
    cross-entropy (its labels: the batch's decoder tokens shifted by one, as
    cross_decoder.teacher_forcing)."""
    red = loss_config.reduction
    m_i2r, m_r2i = margins(
        loss_config.margin, outputs["image"], outputs["recipe"], step, total_steps
    )
    loss = loss_config.triplet * (
        reduce_costs(triplet_costs(outputs["image"], outputs["recipe"], m_i2r), red)
        + reduce_costs(triplet_costs(outputs["recipe"], outputs["image"], m_r2i), red)
    )
    base = loss_config.margin.start
    ssl = [  # both directions of each pair, as H-T's released TripletLoss
        reduce_costs(triplet_costs(p, t, base), red) + reduce_costs(triplet_costs(t, p, base), red)
        for p, t in outputs["ssl"].values()
    ]
    loss = loss + loss_config.recipe_ssl * sum(ssl) / len(ssl)
    if loss_config.cross_decoder and "decoder_logits" in outputs:
        logits = outputs["decoder_logits"]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch[DECODER_TOKENS][:, 1:].reshape(-1),
            ignore_index=0,  # PAD
        )
        loss = loss + loss_config.cross_decoder * ce
    return loss


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
