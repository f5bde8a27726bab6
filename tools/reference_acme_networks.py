"""Reference outputs of ACME's released networks, for tests that need neither torch nor the code:

    python tools/reference_acme_networks.py --acme_dir=ACME [--out=tests/data/acme_networks.npz]

ACME is a checkout of hwang1996/ACME (318091b). Its `models.py` cannot be imported as it is (it
imports `torch.legacy` and `torchwordemb`, which current PyTorch lacks, and parses the command
line at import): this script runs it with those three lines removed and `opts` given, in memory
only; nothing of it is copied here. Needs torch and torchvision (CPU is enough).

At small sizes (`OPTS`), with PyTorch's default initialisation (seed 0; the generator's image
layer scaled by `IMAGE_LAYER_SCALE`) and BatchNorm statistics and affine values set to random
values, in eval mode: `G_NET` (its conditioning augmentation's noise
recorded, the 128 px output), `D_NET128` (real/fake probability and class logits),
`cross_modal_discriminator` and `MultiLabelNet`. The file holds the convolutional networks' state
dicts ('<net>/sd/<key>'); the two MLPs' values (MultiLabelNet alone has 1M) are
`seeded_linear_values(shapes, seed)`, stored as keys, shapes and seed; and the inputs and
outputs. tests/test_gan_networks.py reads it.
"""

from __future__ import annotations

import argparse
import os
import types

import numpy as np

OPTS = dict(
    embDim=16,
    EMBEDDING_DIM=6,
    Z_DIM=5,
    GF_DIM=2,
    DF_DIM=2,
    R_NUM=2,
    BRANCH_NUM=2,
    B_CONDITION=True,
    numClasses=7,
    irnnDim=8,
    srnnDim=8,
    ingrW2VDim=8,
    stDim=8,
    imfeatDim=8,
)
BATCH = 2
NUM_INGREDIENTS = 4102  # MultiLabelNet's output width is fixed in models.py
SEEDED = ("critic", "heads")
IMAGE_LAYER_SCALE = 30.0  # the generator's last conv, so that its tanh output spans [-1, 1]
DROPPED = (
    "import torch.legacy as legacy",
    "import torchwordemb",
    "from args import get_parser",
    "parser = get_parser()",
    "opts = parser.parse_args()",
)
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "acme_networks.npz")


def load_models(acme_dir: str) -> types.ModuleType:
    path = os.path.join(acme_dir, "models.py")
    with open(path) as f:
        source = f.read()
    for line in DROPPED:
        if line not in source:
            raise SystemExit(f"{path}: expected {line!r}; another version?")
        source = source.replace(line, "")
    module = types.ModuleType("acme_models")
    module.opts = types.SimpleNamespace(**OPTS)
    exec(compile(source, path, "exec"), module.__dict__)  # the released code, run
    return module


def randomise_batch_norm(net, rng: np.random.Generator) -> None:
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.1, n).astype(np.float32)))
            m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
            m.weight.data.copy_(torch.from_numpy(rng.normal(1, 0.1, n).astype(np.float32)))
            m.bias.data.copy_(torch.from_numpy(rng.normal(0, 0.1, n).astype(np.float32)))


def seeded_linear_values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """PyTorch-like Linear values (weights U(+-1/sqrt(fan_in)), biases U(+-0.05)) from NumPy's
    frozen-stream RandomState, in the order of `shapes`: MultiLabelNet's 4102-wide output layer
    alone is 1M values, too many to store."""
    rng = np.random.RandomState(seed)
    out = {}
    for key, shape in shapes.items():
        bound = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 0.05
        out[key] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return out


def cases(models: types.ModuleType) -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    o = types.SimpleNamespace(**OPTS)
    nets = {
        "generator": models.G_NET(),
        "discriminator": models.D_NET128(),
        "critic": models.cross_modal_discriminator(),
        "heads": models.MultiLabelNet(),
    }
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():  # PyTorch's default init leaves the picture near 0: spread it
        nets["generator"].img_net2.img[0].weight.mul_(IMAGE_LAYER_SCALE)
    for seed, (name, net) in enumerate(nets.items()):
        randomise_batch_norm(net, rng)
        net.eval()
        if name in SEEDED:  # MLPs: regenerable values instead of stored ones
            shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            values = seeded_linear_values(shapes, seed)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()})
            out[f"{name}/keys"] = np.asarray(list(shapes))
            out[f"{name}/seed"] = np.asarray(seed)
            for key, shape in shapes.items():
                out[f"{name}/shape/{key}"] = np.asarray(shape, np.int64)
            continue
        for key, value in net.state_dict().items():
            out[f"{name}/sd/{key}"] = value.numpy()
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
    t = torch.from_numpy
    embedding, noise, eps = f32(BATCH, o.embDim), f32(BATCH, o.Z_DIM), f32(BATCH, o.EMBEDDING_DIM)
    ca = nets["generator"].ca_net
    ca.reparametrize = lambda mu, logvar: mu + t(eps) * torch.exp(0.5 * logvar)  # noise given
    photos = rng.integers(0, 256, size=(BATCH, 128, 128, 3), dtype=np.uint8)  # stored small
    images = (photos.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)  # in [-1, 1]
    mu = f32(BATCH, o.EMBEDDING_DIM)
    with torch.no_grad():
        fakes, g_mu, g_logvar = nets["generator"](t(noise), t(embedding))
        prob, classes = nets["discriminator"](t(images), t(mu))
        ingredients, recipe_class = nets["heads"](t(embedding))
        out.update(
            {
                "in/embedding": embedding,
                "in/noise": noise,
                "in/eps": eps,
                "in/photos": photos,  # NHWC uint8; the discriminator sees x / 127.5 - 1
                "in/mu": mu,
                "out/generator/images": fakes[0].numpy().transpose(0, 2, 3, 1),
                "out/generator/mu": g_mu.numpy(),
                "out/generator/logvar": g_logvar.numpy(),
                "out/discriminator/prob": prob.numpy(),
                "out/discriminator/classes": classes.numpy(),
                "out/critic": nets["critic"](t(embedding)).numpy(),
                "out/heads/ingredients": ingredients.numpy(),  # sigmoid, as released
                "out/heads/classes": recipe_class.numpy(),
            }
        )
    for key, value in OPTS.items():
        out[f"opts/{key}"] = np.asarray(value)
    out["meta/torch"] = np.asarray(torch.__version__)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--acme_dir", required=True, help="checkout of hwang1996/ACME")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args()
    from reference_vectors import commit_of  # a script's own folder is on its path

    vectors = cases(load_models(args.acme_dir))
    vectors["meta/commit"] = np.asarray(commit_of(args.acme_dir))
    np.savez_compressed(args.out, **vectors)
    size = os.path.getsize(args.out) / 1024
    print(f"wrote {args.out} ({size:.0f} KiB) from commit {vectors['meta/commit']}")


if __name__ == "__main__":
    main()
