"""ACME's networks (`xmodal.models.gan`) against its released modules on the same weights and
inputs (no torch needed): tests/data/acme_networks.npz, written by
`tools/reference_acme_networks.py --acme_dir=ACME` from hwang1996/ACME (318091b)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xmodal.models import gan, import_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VECTORS = os.path.join(REPO, "tests", "data", "acme_networks.npz")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(VECTORS) as f:
        return {k: f[k] for k in f.files}


def _opts(ref) -> dict[str, int]:
    return {k.removeprefix("opts/"): int(v) for k, v in ref.items() if k.startswith("opts/")}


def _state_dict(ref, name: str) -> dict[str, np.ndarray]:
    if f"{name}/keys" in ref:  # regenerated from the stored seed
        sys.path.insert(0, REPO)
        from tools.reference_acme_networks import seeded_linear_values

        keys = [str(k) for k in ref[f"{name}/keys"]]
        shapes = {k: tuple(int(n) for n in ref[f"{name}/shape/{k}"]) for k in keys}
        return seeded_linear_values(shapes, int(ref[f"{name}/seed"]))
    prefix = f"{name}/sd/"
    return {k.removeprefix(prefix): v for k, v in ref.items() if k.startswith(prefix)}


class Porter:
    """Copies released entries into modules with the weight importer's own converters
    (`xmodal.models.import_weights`), and checks that every entry was used."""

    def __init__(self, sd: dict[str, np.ndarray], unused: tuple[str, ...] = ()):
        self.sd, self.used = sd, set()
        self.unused = {k for k in sd if k.startswith(unused) or k.endswith("num_batches_tracked")}

    def linear(self, layer, prefix: str) -> None:
        import_weights.load_linear(layer, self.sd, prefix, self.used)

    def conv(self, layer, prefix: str) -> None:
        import_weights.load_conv(layer, self.sd, prefix, self.used)

    def bn(self, layer, prefix: str) -> None:
        import_weights.load_batch_norm(layer, self.sd, prefix, self.used)

    def block(self, block, conv: str, bn: str) -> None:
        self.conv(block.conv, conv)
        self.bn(block.bn, bn)

    def check(self) -> None:
        assert set(self.sd) - self.used - self.unused == set()


def test_the_vectors_come_from_the_released_commit(ref):
    assert str(ref["meta/commit"]).startswith("318091b")


def test_generator_is_the_released_g_net(ref):
    o = _opts(ref)
    g = gan.Generator(
        o["embDim"],
        z_dim=o["Z_DIM"],
        ca_dim=o["EMBEDDING_DIM"],
        gf_dim=o["GF_DIM"],
        num_residual=o["R_NUM"],
        image_size=128,
        rngs=nnx.Rngs(0),
    )
    p = Porter(_state_dict(ref, "generator"), unused=("img_net1.",))  # the 64 px head, unused
    p.linear(g.ca.fc, "ca_net.fc")
    p.linear(g.fc, "h_net1.fc.0")
    p.bn(g.fc_bn, "h_net1.fc.1")
    for i, up in enumerate(g.ups):
        p.block(up, f"h_net1.upsample{i + 1}.1", f"h_net1.upsample{i + 1}.2")
    p.block(g.joint, "h_net2.jointConv.0", "h_net2.jointConv.1")
    for r, res in enumerate(g.residual):
        p.block(res.inner, f"h_net2.residual.{r}.block.0", f"h_net2.residual.{r}.block.1")
        p.conv(res.conv, f"h_net2.residual.{r}.block.3")
        p.bn(res.bn, f"h_net2.residual.{r}.block.4")
    p.block(g.up, "h_net2.upsample.1", "h_net2.upsample.2")
    p.conv(g.to_image, "img_net2.img.0")
    p.check()
    g.eval()
    images, mu, logvar = g(ref["in/noise"], ref["in/embedding"], ref["in/eps"])
    assert images.shape == (2, 128, 128, 3)
    np.testing.assert_allclose(mu, ref["out/generator/mu"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(logvar, ref["out/generator/logvar"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(images, ref["out/generator/images"], atol=1e-5, rtol=0)
    assert ref["out/generator/images"].std() > 0.3  # a picture that spans tanh's range


def test_image_discriminator_is_the_released_d_net128(ref):
    o = _opts(ref)
    d = gan.ImageDiscriminator(
        o["numClasses"], ca_dim=o["EMBEDDING_DIM"], df_dim=o["DF_DIM"], image_size=128,
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    p = Porter(_state_dict(ref, "discriminator"), unused=("logits_class.",))  # unused by ACME
    p.conv(d.stem, "img_code_s16.0")
    for i, block in enumerate(d.down):
        p.block(block, f"img_code_s16.{2 + 3 * i}", f"img_code_s16.{3 + 3 * i}")
    p.block(d.down32, "img_code_s32.0", "img_code_s32.1")
    p.block(d.down32_1, "img_code_s32_1.0", "img_code_s32_1.1")
    p.block(d.joint, "jointConv.0", "jointConv.1")
    p.conv(d.logit, "logits.0")
    p.conv(d.class_conv, "uncond_branch.0")
    p.linear(d.class_fc, "semantic_branch")
    p.check()
    d.eval()
    images = ref["in/photos"].astype(np.float32) / 127.5 - 1.0
    logit, classes = d(jnp.asarray(images), jnp.asarray(ref["in/mu"]))
    np.testing.assert_allclose(jax.nn.sigmoid(logit), ref["out/discriminator/prob"], atol=1e-5)
    np.testing.assert_allclose(classes, ref["out/discriminator/classes"], atol=1e-5, rtol=0)


def test_critic_and_image_to_recipe_heads_are_the_released_mlps(ref):
    o = _opts(ref)
    critic = gan.EmbeddingCritic(o["embDim"], rngs=nnx.Rngs(0))
    p = Porter(_state_dict(ref, "critic"))
    for layer, i in ((critic.fc1, 0), (critic.fc2, 2), (critic.out, 4)):
        p.linear(layer, f"model.{i}")
    p.check()
    emb = jnp.asarray(ref["in/embedding"])
    np.testing.assert_allclose(critic(emb), ref["out/critic"], atol=1e-5, rtol=0)
    ingredients = ref["out/heads/ingredients"].shape[1]
    heads = gan.ImageToRecipeHeads(o["embDim"], ingredients, o["numClasses"], rngs=nnx.Rngs(0))
    p = Porter(_state_dict(ref, "heads"))
    for layer, key in ((heads.ing1, "model.0"), (heads.ing2, "model.2"), (heads.ing3, "model.4")):
        p.linear(layer, key)
    p.linear(heads.cls1, "ingrs_linear.0")
    p.linear(heads.cls2, "ingrs_linear.2")
    p.check()
    ing_logits, cls_logits = heads(emb)
    got = jax.nn.sigmoid(ing_logits)  # the release's sigmoid scores
    np.testing.assert_allclose(got, ref["out/heads/ingredients"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(cls_logits, ref["out/heads/classes"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [64, 128])
def test_generated_images_feed_the_discriminator_at_both_sizes(size):
    """The 64 px generator (ACME's unused first-stage head) and StackGAN's 64 px discriminator
    layout fit each other, as the 128 px pair does; a size outside them is an error."""
    rngs = nnx.Rngs(0)
    g = gan.Generator(16, z_dim=5, ca_dim=6, gf_dim=2, num_residual=1, image_size=size, rngs=rngs)
    d = gan.ImageDiscriminator(7, ca_dim=6, df_dim=2, image_size=size, rngs=rngs)
    images, mu, _ = g(jnp.ones((2, 5)), jnp.ones((2, 16)), jnp.zeros((2, 6)))
    assert images.shape == (2, size, size, 3) and float(jnp.abs(images).max()) <= 1.0
    logit, classes = d(images, mu)
    assert logit.shape == (2,) and classes.shape == (2, 7)
    with pytest.raises(ValueError, match="image_size must be one of"):
        gan.Generator(16, image_size=96, rngs=rngs)


def test_jitter_moves_each_image_within_the_shift_and_mirrors_some():
    """Every jittered image is its image moved by at most `shift` px each way (edges repeated),
    mirrored or not; across a batch both happen, and the draw follows the key."""
    shift, size = 3, 12
    images = np.random.default_rng(0).random((32, size, size, 3)).astype(np.float32)
    out = np.asarray(gan.jitter(jnp.asarray(images), jax.random.key(0), shift))
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    found = []
    for i in range(len(images)):
        matches = [
            (dy, dx, mirrored)
            for dy in range(2 * shift + 1)
            for dx in range(2 * shift + 1)
            for mirrored in (False, True)
            if np.array_equal(
                out[i],
                padded[i, dy : dy + size, dx : dx + size][:, ::-1]
                if mirrored
                else padded[i, dy : dy + size, dx : dx + size],
            )
        ]
        assert matches, i
        found.append(matches[0])
    assert {m for _, _, m in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 5
    again = gan.jitter(jnp.asarray(images), jax.random.key(0), shift)
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, gan.jitter(jnp.asarray(images), jax.random.key(1), shift))
