"""The batch schema: the names every layer agrees on, in one place.

The pipeline writes batches with these keys, the models read them, the losses and the evaluation
name their outputs after them. A batch of pairs holds `IMAGE` (uint8 [B, S, S, 3]) and the recipe
`COMPONENTS` as padded token ids (title [B, T]; ingredients and instructions [B, N, T]); eval
batches add `INDEX` (record index) and `VALID` (False on padding rows); labelled batches add
`CLASS_ID`; with the cross decoder, `DECODER_TOKENS`. H-T's extra batch of recipes without photos
travels in the same dict under `TEXT_ONLY_PREFIX` + component.
"""

from __future__ import annotations

# Token ids reserved by the tokenizer (xmodal.data.tokenizer): padding is always 0.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

IMAGE = "image"
COMPONENTS = ("title", "ingredients", "instructions")  # the recipe's parts, in this order
INDEX = "index"
VALID = "valid"
CLASS_ID = "class_id"
DECODER_TOKENS = "decoder_tokens"
TEXT_ONLY_PREFIX = "text_only/"  # batch keys of the extra batch of recipes without photos
TEXT_ONLY_SUFFIX = "_text"  # split name: e.g. "train_text" = train recipes without photos

# The two retrieval directions: the names of eval_<split>.json and their short tags in metric
# names (val_medR_i2r, margin_r2i).
IMAGE_TO_RECIPE = "image_to_recipe"
RECIPE_TO_IMAGE = "recipe_to_image"
DIRECTIONS = (IMAGE_TO_RECIPE, RECIPE_TO_IMAGE)
DIRECTION_TAGS = {IMAGE_TO_RECIPE: "i2r", RECIPE_TO_IMAGE: "r2i"}
