"""ACME's generative and adversarial networks (Wang et al., CVPR 2019; released code
hwang1996/ACME @ 318091b, `models.py`, after StackGAN-v2), in NHWC, for TNLBT's adversarial part.

- `EmbeddingCritic` (`cross_modal_discriminator`): tells image from recipe embeddings (WGAN-GP;
  no normalisation, as a gradient-penalty critic needs).
- `ConditioningAugmentation` (`CA_NET`): a recipe embedding -> (mu, logvar) of a Gaussian; the
  generator's condition is a sample of it, with the KL term keeping it smooth.
- `Generator` (`G_NET`): [condition, noise] -> 4 x 4 -> four nearest-neighbour x2 up-blocks ->
  64 px (`img_net1`, unused by the release's 128 px run), or a second stage (the condition again,
  residual blocks, one more up-block) -> 128 px; tanh images in [-1, 1].
- `ImageDiscriminator` (`D_NET128`; at 64 px StackGAN's `D_NET64` layout: the 16x encoder only):
  a real/fake logit conditioned on mu, and class logits from the image alone.
- `ImageToRecipeHeads` (`MultiLabelNet`): ingredient and class logits from an image embedding.

Every block is the release's: convolutions without bias before BatchNorm, GLU (half the channels
gate the other half), LeakyReLU 0.2. Discriminators give logits (the release ends in a sigmoid
and uses BCELoss). Values equal the released modules' on the same weights
(`tests/test_gan_networks.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal.models import conv_ops
from xmodal.models.layers import Dtype

LEAKY_SLOPE = 0.2
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
BN_EPS = 1e-5
IMAGE_SIZES = (64, 128)
# How the image -> recipe heads' ingredient logits are trained (xmodal.training.adversarial_step):
# a sigmoid cross-entropy per word, or PyTorch's MultiLabelMarginLoss as ACME.
INGREDIENT_LOSSES = ("bce", "margin")


def resize_square(images: jax.Array, size: int) -> jax.Array:
    """[B, S, S, C] -> [B, size, size, C] float32 (bilinear; unchanged when S = size)."""
    x = images.astype(jnp.float32)
    if x.shape[1] == size:
        return x
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear")


def to_generator_range(images: jax.Array, size: int) -> jax.Array:
    """uint8 photos [B, S, S, 3] -> float32 in [-1, 1] at `size` px (the generator's tanh range)."""
    return resize_square(images, size) / 127.5 - 1.0


def to_pixels(images: jax.Array, size: int) -> jax.Array:
    """Generated images in [-1, 1] -> float32 pixel values in [0, 255] at `size` px: what the
    image encoder reads (`DualEncoder.embed_image` normalises them like uint8 photos)."""
    return resize_square((images.astype(jnp.float32) + 1.0) * 127.5, size)


def jitter(images: jax.Array, key: jax.Array, shift: int) -> jax.Array:
    """Each image [B, H, W, C] moved by up to `shift` px each way (edges repeated) and mirrored
    with probability 1/2: a generated image must be recognised wherever it sits, as a photo's
    random crop and flip are in training, not through one pixel pattern."""
    b, h, w, c = images.shape
    k_shift, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * shift + 1)
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
    moved = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    return jnp.where(flip, moved[:, :, ::-1], moved)


def glu(x: jax.Array) -> jax.Array:
    """Gated linear unit over the channel axis: first half x sigmoid(second half)."""
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def leaky(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour x2 (PyTorch's `nn.Upsample(scale_factor=2, mode='nearest')`)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def tile_condition(c: jax.Array, size: int) -> jax.Array:
    """[B, C] -> [B, size, size, C]."""
    return jnp.broadcast_to(c[:, None, None, :], (c.shape[0], size, size, c.shape[-1]))


def _conv(
    cin: int,
    cout: int,
    kernel: int,
    stride: int,
    pad: int,
    *,
    bias: bool,
    dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=bias,
        dtype=dtype,
        conv_general_dilated=conv_ops.conv_general_dilated,
        rngs=rngs,
    )


_batch_norm = functools.partial(nnx.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPS)


class ConvBnAct(nnx.Module):
    """conv (no bias) -> BatchNorm -> GLU (`upBlock` with `up`, `Block3x3_relu`) or LeakyReLU
    (`Block3x3_leakRelu`, `downBlock`). GLU halves the conv's 2 x cout channels."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        kernel: int = 3,
        stride: int = 1,
        act: str = "glu",
        up: bool = False,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        width = 2 * cout if act == "glu" else cout
        pad = (kernel - 1) // 2
        self.conv = _conv(cin, width, kernel, stride, pad, bias=False, dtype=dtype, rngs=rngs)
        self.bn = _batch_norm(width, dtype=dtype, rngs=rngs)
        self.act, self.up = act, up

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(upsample2(x) if self.up else x))
        return glu(x) if self.act == "glu" else leaky(x)


class ResBlock(nnx.Module):
    """x + BN(conv(GLU(BN(conv(x))))) (StackGAN-v2's; no activation after the sum)."""

    def __init__(self, channels: int, *, dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.inner = ConvBnAct(channels, channels, dtype=dtype, rngs=rngs)
        self.conv = _conv(channels, channels, 3, 1, 1, bias=False, dtype=dtype, rngs=rngs)
        self.bn = _batch_norm(channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.bn(self.conv(self.inner(x)))


class EmbeddingCritic(nnx.Module):
    """Linear -> LeakyReLU -> Linear -> LeakyReLU -> Linear(1): a score per embedding."""

    def __init__(self, embed_dim: int, *, hidden: tuple[int, int] = (512, 256), rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(embed_dim, hidden[0], rngs=rngs)
        self.fc2 = nnx.Linear(hidden[0], hidden[1], rngs=rngs)
        self.out = nnx.Linear(hidden[1], 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(leaky(self.fc2(leaky(self.fc1(x.astype(jnp.float32))))))


class ConditioningAugmentation(nnx.Module):
    """Linear(D -> 4 x ca_dim) -> GLU -> (mu, logvar), each [B, ca_dim]."""

    def __init__(self, embed_dim: int, ca_dim: int, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(embed_dim, 4 * ca_dim, rngs=rngs)
        self.ca_dim = ca_dim

    def __call__(self, embedding: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = glu(self.fc(embedding.astype(jnp.float32)))
        return x[:, : self.ca_dim], x[:, self.ca_dim :]

    @staticmethod
    def sample(mu: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
        """mu + eps * exp(logvar / 2), eps ~ N(0, I) drawn by the caller."""
        return mu + eps * jnp.exp(0.5 * logvar)


class Generator(nnx.Module):
    """Recipe embedding + noise -> image [B, S, S, 3] in [-1, 1] (S = `image_size`, 64 or 128)."""

    def __init__(
        self,
        embed_dim: int,
        *,
        z_dim: int = 100,
        ca_dim: int = 128,
        gf_dim: int = 64,
        num_residual: int = 2,
        image_size: int = 128,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"generator image_size must be one of {IMAGE_SIZES}, got {image_size}")
        ngf = gf_dim * 16
        kw = dict(dtype=dtype, rngs=rngs)
        self.ca = ConditioningAugmentation(embed_dim, ca_dim, rngs=rngs)  # float32: it is tiny
        self.fc = nnx.Linear(ca_dim + z_dim, ngf * 4 * 4 * 2, use_bias=False, **kw)
        self.fc_bn = _batch_norm(ngf * 4 * 4 * 2, **kw)
        self.ups = nnx.List(
            [ConvBnAct(ngf // 2**i, ngf // 2 ** (i + 1), up=True, **kw) for i in range(4)]
        )
        self.ngf, self.image_size = ngf, image_size
        if image_size == 128:
            self.joint = ConvBnAct(gf_dim + ca_dim, gf_dim, **kw)
            self.residual = nnx.List([ResBlock(gf_dim, **kw) for _ in range(num_residual)])
            self.up = ConvBnAct(gf_dim, gf_dim // 2, up=True, **kw)
            self.to_image = _conv(gf_dim // 2, 3, 3, 1, 1, bias=False, **kw)
        else:
            self.to_image = _conv(gf_dim, 3, 3, 1, 1, bias=False, **kw)

    def __call__(
        self, noise: jax.Array, embedding: jax.Array, eps: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(images, mu, logvar); `eps` [B, ca_dim] is conditioning augmentation's draw."""
        mu, logvar = self.ca(embedding)
        c = ConditioningAugmentation.sample(mu, logvar, eps)
        h = glu(self.fc_bn(self.fc(jnp.concatenate([c, noise], axis=-1))))
        # PyTorch's view(-1, ngf, 4, 4) of the flat vector, then channels last.
        h = h.reshape(-1, self.ngf, 4, 4).transpose(0, 2, 3, 1)
        for block in self.ups:
            h = block(h)
        if self.image_size == 128:
            h = self.joint(jnp.concatenate([tile_condition(c, h.shape[1]), h], axis=-1))
            for block in self.residual:
                h = block(h)
            h = self.up(h)
        return jnp.tanh(self.to_image(h).astype(jnp.float32)), mu, logvar


class ImageDiscriminator(nnx.Module):
    """Image [B, S, S, 3] in [-1, 1] and mu [B, ca_dim] -> (real/fake logit [B], class logits
    [B, num_classes]); the class head sees the image only."""

    def __init__(
        self,
        num_classes: int,
        *,
        ca_dim: int = 128,
        df_dim: int = 64,
        image_size: int = 128,
        dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if image_size not in IMAGE_SIZES:
            raise ValueError(
                f"discriminator image_size must be one of {IMAGE_SIZES}, got {image_size}"
            )
        ndf = df_dim
        kw = dict(dtype=dtype, rngs=rngs)
        down = functools.partial(ConvBnAct, kernel=4, stride=2, act="leaky", **kw)
        self.stem = _conv(3, ndf, 4, 2, 1, bias=False, **kw)
        self.down = nnx.List([down(ndf * 2**i, ndf * 2 ** (i + 1)) for i in range(3)])
        if image_size == 128:  # 8 px -> 4 px, then back to 8 x ndf channels
            self.down32 = down(ndf * 8, ndf * 16)
            self.down32_1 = ConvBnAct(ndf * 16, ndf * 8, act="leaky", **kw)
        self.joint = ConvBnAct(ndf * 8 + ca_dim, ndf * 8, act="leaky", **kw)
        self.logit = _conv(ndf * 8, 1, 4, 4, 0, bias=True, **kw)
        self.class_conv = _conv(ndf * 8, ndf * 4, 4, 4, 0, bias=True, **kw)
        self.class_fc = nnx.Linear(ndf * 4, num_classes, rngs=rngs)  # float32 logits
        self.image_size, self.dtype = image_size, dtype

    def __call__(self, images: jax.Array, mu: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = leaky(self.stem(images.astype(self.dtype)))
        mu = mu.astype(self.dtype)
        for block in self.down:
            x = block(x)
        if self.image_size == 128:
            x = self.down32_1(self.down32(x))
        joint = self.joint(jnp.concatenate([tile_condition(mu, x.shape[1]), x], axis=-1))
        logit = self.logit(joint).reshape(-1).astype(jnp.float32)
        classes = leaky(self.class_conv(x)).reshape(x.shape[0], -1)
        return logit, self.class_fc(classes.astype(jnp.float32))


class ImageToRecipeHeads(nnx.Module):
    """Image embedding -> (ingredient logits [B, num_ingredients], class logits [B, C])."""

    def __init__(
        self,
        embed_dim: int,
        num_ingredients: int,
        num_classes: int,
        *,
        hidden: tuple[int, int] = (512, 256),
        rngs: nnx.Rngs,
    ):
        self.ing1 = nnx.Linear(embed_dim, hidden[0], rngs=rngs)
        self.ing2 = nnx.Linear(hidden[0], hidden[1], rngs=rngs)
        self.ing3 = nnx.Linear(hidden[1], num_ingredients, rngs=rngs)
        self.cls1 = nnx.Linear(embed_dim, hidden[0], rngs=rngs)
        self.cls2 = nnx.Linear(hidden[0], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = x.astype(jnp.float32)
        ingredients = self.ing3(leaky(self.ing2(leaky(self.ing1(x)))))
        return ingredients, self.cls2(leaky(self.cls1(x)))


class GenerativeSide(nnx.Module):
    """What the encoders' optimizer side trains beside them: the recipe -> image generator
    (with conditioning augmentation) and the image -> recipe heads; either may be absent."""

    def __init__(self, generator: Generator | None, heads: ImageToRecipeHeads | None):
        self.generator, self.heads = generator, heads


class Discriminators(nnx.Module):
    """The second player: the embedding critic (modality alignment) and the image
    discriminator (recipe -> image); either may be absent."""

    def __init__(self, critic: EmbeddingCritic | None, image: ImageDiscriminator | None):
        self.critic, self.image = critic, image


def has_generator(adversarial_config: Any) -> bool:
    """Whether `config.adversarial` builds a generator: a translation or generated-image ranking
    weight is set."""
    return bool(adversarial_config.enabled and _generates(adversarial_config))


def _generates(a: Any) -> bool:
    return a.translate > 0 or a.generated_triplet > 0


def build_adversarial(
    adversarial_config: Any,
    *,
    embed_dim: int,
    vocab_size: int,
    dtype: Dtype,
    rngs: nnx.Rngs,
) -> tuple[GenerativeSide, Discriminators]:
    """`config.adversarial`'s networks: the critic when `align` > 0; the generator, the image
    discriminator and the image -> recipe heads (ingredient words over the recipe vocabulary,
    dish classes) when `translate` > 0 (the generator alone also for `generated_triplet`)."""
    a = adversarial_config
    translate = a.translate > 0
    generate = _generates(a)
    generator = (
        Generator(
            embed_dim,
            z_dim=a.z_dim,
            ca_dim=a.ca_dim,
            gf_dim=a.gf_dim,
            num_residual=a.num_residual,
            image_size=a.image_size,
            dtype=dtype,
            rngs=rngs,
        )
        if generate
        else None
    )
    heads = (
        ImageToRecipeHeads(embed_dim, vocab_size, a.num_classes, rngs=rngs) if translate else None
    )
    critic = EmbeddingCritic(embed_dim, rngs=rngs) if a.align > 0 else None
    image = (
        ImageDiscriminator(
            a.num_classes,
            ca_dim=a.ca_dim,
            df_dim=a.df_dim,
            image_size=a.image_size,
            dtype=dtype,
            rngs=rngs,
        )
        if translate
        else None
    )
    return GenerativeSide(generator, heads), Discriminators(critic, image)
