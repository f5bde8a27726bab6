"""Issue 25's acceptance measurement: xmodal's embeddings of an imported full-size released H-T
checkpoint (ViT-B/16, the released vocabulary) against the released PyTorch model's, per row.

Four steps, two Python environments (the released side needs torch + torchvision + timm, which
xmodal's own environment does not hold; a scratch venv does):

    REF=python-with-torch-torchvision-timm; XM=.venv/bin/python
    $REF tools/released_acceptance.py build --released_dir=CHECKOUT --out=C       # C/vit_ssl.zip
    $XM -m xmodal.data.prepare --raw_dir=R --out_dir=D --vocabulary=CHECKOUT/data/vocab.pkl \
        --photo_resize=torchvision
    $XM -m xmodal.apps.import_checkpoint --checkpoint=C/vit_ssl.zip --workdir=W --config.data.dir=D
    $XM -m xmodal.main --workdir=W --mode=embed --config.data.dir=D \
        --config.eval.batch_size=64                                          # W/embeddings_test.npz
    $XM tools/released_acceptance.py tokens --data_dir=D --out=C/test.json
    $REF tools/released_acceptance.py released --released_dir=CHECKOUT --checkpoint_dir=C \
        --raw_dir=R --tokens=C/test.json --out=C/released.npz
    $XM tools/released_acceptance.py compare --xmodal=W/embeddings_test.npz \
        --released=C/released.npz

CHECKOUT is amzn/image-to-recipe-transformers (its src/ is imported from there at run time,
nothing is copied here). `build` makes the released `JointEmbedding` with seeded random weights:
ViTBackbone asks timm for pretrained weights (a download), so timm is called with
pretrained=False, and timm >= 0.6's `forward_features` (all tokens) is replaced by what timm 0.3.1
returned (the CLS vector after the final norm). The test pairs are the first photo of each test
recipe (as the released dataset.py picks) from the raw folder through the released eval transform
(Resize(256), CenterCrop(224), ImageNet mean/std), and the recipe token ids of xmodal's prepared
records (equal to the released get_token_ids', tests/test_released_vocabulary.py), truncated as
the released dataset.py truncates.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
MAX_LINES, MAX_TOKENS = 20, 15  # released dataset.py defaults (the title uses max_length_instrs)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BACKBONE = "vit_base_patch16_224"


def build_released(released_dir: str, seed: int = 0):
    """The released JointEmbedding at the released defaults + ViT-B/16, eval mode; its args."""
    import timm
    import torch
    from reference_vectors import import_released

    models = import_released(released_dir)
    create = timm.create_model
    models.timm.create_model = lambda name, pretrained=True, **kw: create(name, False, **kw)

    def cls_features(self, x):  # timm 0.3.1's forward_features: the normed CLS vector
        return self.forward_head(type(self).forward_features(self, x), pre_logits=True)

    sys.path.insert(0, os.path.join(released_dir, "src"))
    from config import get_args  # the released argparse defaults, as train.py saves them

    sys.argv = ["train.py", "--save_dir=.", "--root=.", "--model_name=vit_ssl"]
    sys.argv += [f"--backbone={BACKBONE}"]
    args = get_args()
    with open(os.path.join(released_dir, "data", "vocab.pkl"), "rb") as f:
        vocab_size = len(pickle.load(f))
    torch.manual_seed(seed)
    model = models.get_model(args, vocab_size)
    backbone = model.image_encoder.backbone
    backbone.forward_features = cls_features.__get__(backbone)
    return model.eval(), args


def cmd_build(a: argparse.Namespace) -> None:
    import torch

    model, args = build_released(a.released_dir, a.seed)
    folder = os.path.join(a.out, "vit_ssl")
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "model-best.ckpt"))
    with open(os.path.join(folder, "args.pkl"), "wb") as f:
        pickle.dump(args, f)
    with zipfile.ZipFile(os.path.join(a.out, "vit_ssl.zip"), "w") as z:
        for name in ("args.pkl", "model-best.ckpt"):
            z.write(os.path.join(folder, name), f"vit_ssl/{name}")
    print(f"wrote {a.out}/vit_ssl.zip ({len(model.state_dict())} tensors)")


def cmd_tokens(a: argparse.Namespace) -> None:
    from xmodal.data import pipeline

    fields = ("id", "title_ids", "ingredient_ids", "instruction_ids", "image_ids")
    rows = pipeline.split_metadata(a.data_dir, a.split, fields=fields)
    with open(a.out, "w") as f:
        json.dump(rows, f)
    print(f"wrote {len(rows)} {a.split} recipes to {a.out}")


def cmd_released(a: argparse.Namespace) -> None:
    import torch
    import torchvision.transforms as T
    from PIL import Image

    model, _ = build_released(a.released_dir)
    path = os.path.join(a.checkpoint_dir, "vit_ssl", "model-best.ckpt")
    model.load_state_dict(torch.load(path, weights_only=True))
    with open(a.tokens) as f:
        rows = json.load(f)
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    photos = []
    for r in rows:
        name = r["image_ids"][0]
        photos.append(transform(Image.open(os.path.join(a.raw_dir, a.split, *name[:4], name))))

    def lines(ids: list[list[int]]) -> torch.Tensor:
        kept = [line[:MAX_TOKENS] for line in ids[:MAX_LINES]]
        width = max(len(line) for line in kept)
        return torch.tensor([line + [0] * (width - len(line)) for line in kept])[None]

    with torch.no_grad():
        image = torch.cat([model.image_encoder(torch.stack(photos[i : i + 8])) for i in
                           range(0, len(photos), 8)])  # fmt: skip
        recipe = torch.cat([
            model(None, torch.tensor(r["title_ids"][:MAX_TOKENS])[None],
                  lines(r["ingredient_ids"]), lines(r["instruction_ids"]))[1]
            for r in rows
        ])  # fmt: skip
    ids = np.array([r["id"] for r in rows])
    np.savez(a.out, image=image.numpy(), recipe=recipe.numpy(), ids=ids)
    print(f"wrote {len(ids)} released embeddings to {a.out}")


def row_cosines(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine of row i of `u` and row i of `v`, each row L2-normalised first (float64)."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"need two [N, D] arrays of one shape, got {u.shape} and {v.shape}")
    u, v = (m.astype(np.float64) for m in (u, v))
    u, v = (m / np.linalg.norm(m, axis=1, keepdims=True) for m in (u, v))
    return (u * v).sum(1)


def cmd_compare(a: argparse.Namespace) -> None:
    x, r = np.load(a.xmodal), np.load(a.released)
    if not np.array_equal(x["ids"], r["ids"]):
        raise SystemExit("the two files hold different recipes (or another order)")
    for key in ("image", "recipe"):
        cos = row_cosines(x[key], r[key])
        print(
            f"{key}: N={len(cos)} cosine min {cos.min():.6f} mean {cos.mean():.6f} "
            f"rows below {a.threshold}: {int((cos < a.threshold).sum())}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--released_dir", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tokens")
    t.add_argument("--data_dir", required=True)
    t.add_argument("--split", default="test")
    t.add_argument("--out", required=True)
    r = sub.add_parser("released")
    for flag in ("released_dir", "checkpoint_dir", "raw_dir", "tokens", "out"):
        r.add_argument(f"--{flag}", required=True)
    r.add_argument("--split", default="test")
    c = sub.add_parser("compare")
    c.add_argument("--xmodal", required=True)
    c.add_argument("--released", required=True)
    c.add_argument("--threshold", type=float, default=0.999)
    a = p.parse_args()
    {"build": cmd_build, "tokens": cmd_tokens, "released": cmd_released, "compare": cmd_compare}[
        a.cmd
    ](a)


if __name__ == "__main__":
    main()
