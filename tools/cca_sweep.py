"""Sweep the CCA latent dimension (papers/001's sweep): extract features once, fit CCA at each
dimension and text choice, print one table, write the full results as JSON.

    python tools/cca_sweep.py --config=configs/cca.py:tiny --dims=4,8,16,32 --out=sweep.json
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from xmodal.baselines import cca

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cca.py", "CCA config[:preset].")
_DIMS = flags.DEFINE_list("dims", ["16", "64", "256", "1024"], "Latent dimensions to try.")
_OUT = flags.DEFINE_string("out", "cca_sweep.json", "Where the JSON results go.")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    _, _, train, test = cca.extract_features(config, "")
    rows = []
    for text in config.cca.texts:
        width = min(train["image"].shape[1], cca.text_features(train, text).shape[1])
        for dim in sorted({min(int(d), width) for d in _DIMS.value}):
            r = cca.evaluate_cca(
                train,
                test,
                text=text,
                dim=dim,
                reg=config.cca.reg,
                power=config.cca.power,
                eval_config=config.eval,
            )
            rows.append({"text": text, **r})
    bag = next(iter(rows[0]["image_to_recipe"]))
    print(
        f"{'text':<14}{'dim':>6}  bag {bag}: {'medR i2r':>9}{'R@1 i2r':>9}{'medR r2i':>9}"
        f"{'R@1 r2i':>9}"
    )
    for r in rows:
        i2r, r2i = r["image_to_recipe"][bag], r["recipe_to_image"][bag]
        print(
            f"{r['text']:<14}{r['dim']:>6}  {'':>7}{i2r['medR']['mean']:>9.1f}"
            f"{i2r['R@1']['mean']:>9.1f}{r2i['medR']['mean']:>9.1f}{r2i['R@1']['mean']:>9.1f}"
        )
    with open(_OUT.value, "w") as f:
        json.dump(
            {"train_pairs": len(train["image"]), "test_pairs": len(test["image"]), "rows": rows},
            f,
            indent=2,
        )


if __name__ == "__main__":
    app.run(main)
