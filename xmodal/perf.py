"""Performance accounting: analytic training FLOPs of the dual encoder (ViT or ResNet images;
H-T's hierarchical transformers, the flat transformer or im2recipe's LSTMs for recipes; the cross
decoder and ACME's adversarial networks when they train), peak FLOP/s per device kind (for
model FLOPs utilisation), a compiled program's memory and the largest batch it extrapolates to,
and a counter of XLA compilations (to prove a step compiles once). Used by tools/bench_train.py,
tools/bench_torch.py and the tests; nothing here runs on the training hot path.
"""

from __future__ import annotations

import threading
from typing import Any

import jax
from jax import monitoring

from xmodal.data import decoder_targets
from xmodal.models.resnet import EXPANSION, RESNET_DEPTHS
from xmodal.run import decoder_trains

# Dense peak FLOP/s per device from the vendors' datasheets (no sparsity). MFU is reported against
# the peak of the compute dtype: bf16 tensor cores for bfloat16, and for float32 the TF32 tensor
# core rate, which XLA uses for f32 matmuls on Ampere+ at the default precision.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bfloat16": 989e12, "float32": 494e12},
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Peak dense FLOP/s of `device` for `dtype`, or None where unknown (CPUs: they have no
    published peak worth comparing to; measure it with a matmul if you need one)."""
    return peak_flops_of_kind(device.device_kind, dtype)


def peak_flops_of_kind(kind: str, dtype: str) -> float | None:
    """`peak_flops` by device name (JAX's `device_kind`, or CUDA's device name as PyTorch gives
    it: the same string, e.g. 'NVIDIA H100 PCIe')."""
    if "H200" in kind:
        key = "H200"
    elif "H100" in kind:
        key = "H100 PCIe" if "PCIe" in kind else "H100 SXM"
    elif "A100" in kind:
        key = "A100"
    else:
        return None
    return PEAK_FLOPS[key].get(dtype)


def _transformer_forward_flops(tokens: int, width: int, mlp_dim: int, depth: int) -> float:
    """Forward FLOPs (2 per multiply-add) of `depth` pre-LN blocks over one sequence: q, k, v and
    output projections (4 W^2 per token), the MLP (2 W M per token), and the two attention matmuls
    (Q K^T and P V: 2 T^2 W). LayerNorm, softmax and GELU are left out, as in MFU convention."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens**2 * width
    return float(depth * per_layer)


def cross_decoder_forward_flops(
    config: Any, vocab_size: int, image_tokens: int | None = None, image_width: int | None = None
) -> float:
    """Forward FLOPs of the cross decoder on one example (teacher forcing: L = max_decoder_tokens
    - 1 inputs) over a memory of the image encoder's tokens (ViT: 1 + N; `image_tokens` and
    `image_width` give another encoder's) and `recipe_tokens` recipe tokens: the
    memory projections, per block causal self-attention (4 W^2 per token + 2 L^2 W), cross-
    attention (q / out on L tokens, k / v on M memory tokens, 2 L M W for the two matmuls) and the
    MLP, then the output head over the decoder's vocabulary (the tokenizer's plus its separators:
    at H-T's ~16k words the head is about a quarter of a b16 decoder)."""
    d, m = config.data, config.model
    dec, vit = m.cross_decoder, m.vit
    w, length = dec.width, d.max_decoder_tokens - 1
    if image_tokens is None:
        image_tokens, image_width = 1 + (d.image_size // vit.patch_size) ** 2, vit.width
    memory = image_tokens + dec.recipe_tokens
    flops = 2.0 * image_tokens * image_width * w + 2.0 * m.embed_dim * dec.recipe_tokens * w
    per_block = 2.0 * length * (4 * w * w + 2 * w * dec.mlp_dim) + 4.0 * length**2 * w
    per_block += 2.0 * (length + memory) * 2 * w * w + 4.0 * length * memory * w
    flops += dec.depth * per_block
    return flops + 2.0 * length * w * decoder_targets.decoder_vocab_size(vocab_size)


def _conv_flops(size: int, kernel: int, cin: int, cout: int) -> float:
    """A convolution's forward FLOPs at `size` x `size` outputs."""
    return 2.0 * size * size * kernel * kernel * cin * cout


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def vit_forward_flops(config: Any) -> tuple[float, int, int]:
    """The ViT on one image: (forward FLOPs, tokens, width): the patch embedding and the blocks."""
    vit, patches = config.model.vit, (config.data.image_size // config.model.vit.patch_size) ** 2
    flops = 2.0 * patches * (vit.patch_size**2 * 3) * vit.width
    flops += _transformer_forward_flops(1 + patches, vit.width, vit.mlp_dim, vit.depth)
    return flops, 1 + patches, vit.width


def resnet_forward_flops(resnet: Any, image_size: int) -> tuple[float, int, int]:
    """The ResNet (xmodal.models.resnet) on one image: (forward FLOPs of its convolutions and
    `fc`, the last map's tokens, their width). BatchNorm, ReLU and pooling are left out, as in
    torchvision's published counts."""
    kind, standard = RESNET_DEPTHS[resnet.depth]
    size = _conv_out(image_size, 7, 2, 3)
    flops = _conv_flops(size, 7, 3, resnet.width)
    size, cin = _conv_out(size, 3, 2, 1), resnet.width
    for i, n in enumerate(tuple(resnet.blocks) or standard):
        planes = resnet.width * 2**i
        cout = planes * EXPANSION[kind]
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            out = _conv_out(size, 3, stride, 1)
            if kind == "basic":
                flops += _conv_flops(out, 3, cin, planes) + _conv_flops(out, 3, planes, planes)
            else:
                flops += _conv_flops(size, 1, cin, planes) + _conv_flops(out, 3, planes, planes)
                flops += _conv_flops(out, 1, planes, cout)
            if stride != 1 or cin != cout:  # the downsample shortcut
                flops += _conv_flops(out, 1, cin, cout)
            size, cin = out, cout
    return flops + 2.0 * cin * resnet.num_classes, size * size, cin


def _lstm_flops(steps: int, in_features: int, hidden: int) -> float:
    """An LSTM over `steps` (padded) steps: the four gates' input and recurrent matmuls."""
    return 2.0 * steps * 4 * hidden * (in_features + hidden)


def lstm_recipe_forward_flops(config: Any) -> tuple[float, int]:
    """im2recipe's recipe encoder (xmodal.models.text_rnn.LSTMRecipeEncoder) on one recipe:
    (forward FLOPs, feature width): bi-LSTMs over the title's words and the ingredients, the
    word-level LSTM over every instruction's tokens and the sentence-level one over them."""
    d, lstm = config.data, config.model.lstm
    flops, width = 0.0, 0
    if "title" in lstm.components:
        flops += 2 * _lstm_flops(d.max_title_tokens, lstm.word_dim, lstm.title_hidden)
        width += 2 * lstm.title_hidden
    if "ingredients" in lstm.components:
        flops += 2 * _lstm_flops(d.max_ingredients, lstm.word_dim, lstm.ingredient_hidden)
        width += 2 * lstm.ingredient_hidden
    if "instructions" in lstm.components:
        words = d.max_instructions * d.max_instruction_tokens
        flops += _lstm_flops(words, lstm.word_dim, lstm.sentence_hidden)
        flops += _lstm_flops(d.max_instructions, lstm.sentence_hidden, lstm.instruction_hidden)
        width += lstm.instruction_hidden
    return flops, width


def generator_forward_flops(adversarial: Any, embed_dim: int) -> float:
    """ACME's generator (xmodal.models.gan.Generator) on one example: conditioning augmentation,
    the 4 x 4 projection, four up-blocks (each conv makes 2 x its output channels for the GLU),
    at 128 px the second stage (joint conv, residual blocks, one more up-block), and the conv
    to RGB. BatchNorm, GLU and the upsampling are left out."""
    a = adversarial
    ngf, gf, ca = a.gf_dim * 16, a.gf_dim, a.ca_dim
    flops = 2.0 * embed_dim * 4 * ca + 2.0 * (ca + a.z_dim) * ngf * 4 * 4 * 2
    for i in range(4):
        flops += _conv_flops(8 * 2**i, 3, ngf // 2**i, 2 * (ngf // 2 ** (i + 1)))
    if a.image_size == 128:
        flops += _conv_flops(64, 3, gf + ca, 2 * gf)
        flops += a.num_residual * (_conv_flops(64, 3, gf, 2 * gf) + _conv_flops(64, 3, gf, gf))
        flops += _conv_flops(128, 3, gf, 2 * (gf // 2)) + _conv_flops(128, 3, gf // 2, 3)
    else:
        flops += _conv_flops(64, 3, gf, 3)
    return flops


def image_discriminator_forward_flops(adversarial: Any) -> float:
    """ACME's image discriminator (gan.ImageDiscriminator) on one image: the stride-2 4 x 4
    convs down to 4 x 4 (with the extra 1024-channel block at 128 px), the conditioned joint
    conv, the real/fake logit and the class head."""
    a = adversarial
    ndf, size = a.df_dim, a.image_size
    flops = _conv_flops(size // 2, 4, 3, ndf)
    for i in range(3):
        flops += _conv_flops(size // 2 ** (i + 2), 4, ndf * 2**i, ndf * 2 ** (i + 1))
    if size == 128:
        flops += _conv_flops(4, 4, ndf * 8, ndf * 16) + _conv_flops(4, 3, ndf * 16, ndf * 8)
    flops += _conv_flops(4, 3, ndf * 8 + a.ca_dim, ndf * 8) + _conv_flops(1, 4, ndf * 8, 1)
    return flops + _conv_flops(1, 4, ndf * 8, ndf * 4) + 2.0 * ndf * 4 * a.num_classes


def adversarial_train_flops(config: Any, vocab_size: int) -> dict[str, float]:
    """FLOPs per example that `config.adversarial` adds to a train step
    (xmodal.training.adversarial_step), each part x 3 for forward + backward:
    - generator: once (its images feed both players);
    - image discriminator: `critic_steps` x (real + generated images) in its own step, plus one
      pass over the generated images for the generator's loss;
    - critic: `critic_steps` x (image + recipe + the penalty's mix, whose gradient-of-gradient
      counts twice) plus one for the encoders' term;
    - image -> recipe heads: ingredients over the vocabulary and the class head;
    - the generated images' ranking (`generated_triplet`): the image encoder's forward pass over
      every `generated_triplet_stride`-th generated image and its input gradient (about one
      more forward pass; its weights are held).
    Returns {'generator', 'image_discriminator', 'critic', 'heads', 'ranking', 'train'}; zeros
    when off."""
    a, d = config.adversarial, config.model.embed_dim
    parts = ("generator", "image_discriminator", "critic", "heads", "ranking", "train")
    out = dict.fromkeys(parts, 0.0)
    if not a.enabled:
        return out
    if a.translate > 0 or a.generated_triplet > 0:
        out["generator"] = 3 * generator_forward_flops(a, d)
    if a.translate > 0:
        passes = 2 * a.critic_steps + 1
        out["image_discriminator"] = 3 * passes * image_discriminator_forward_flops(a)
        heads = 2.0 * (d * 512 + 512 * 256 + 256 * vocab_size + d * 512 + 512 * a.num_classes)
        out["heads"] = 3 * heads
    if a.generated_triplet > 0:
        out["ranking"] = 2 * image_forward_flops(config)[0] / a.generated_triplet_stride
    if a.align > 0:
        critic = 2.0 * (d * 512 + 512 * 256 + 256)
        out["critic"] = 3 * (4 * a.critic_steps + 1) * critic
    out["train"] = sum(v for k, v in out.items() if k != "train")
    return out


def train_flops_per_example(
    config: Any, batch_size: int | None = None, vocab_size: int | None = None
) -> dict[str, float]:
    """Analytic FLOPs of one training example of the dual encoder on padded shapes (what the
    compiled step computes), for `model.image` vit | resnet and `model.recipe` hierarchical |
    transformer | lstm. Backward = 2 x forward, so training = 3 x forward (Kaplan et al. 2020,
    "6 N" per token). The in-batch loss adds 2 B D per direction and per example. When the run
    trains the cross decoder its FLOPs are in (`cross_decoder_forward_flops`; they depend on the
    vocabulary, so `vocab_size` is then required). The class head is left out (D x classes).

    With `config.adversarial` on, its networks' training FLOPs are in 'adversarial' and 'train'
    (`adversarial_train_flops`, with the image encoder's passes over generated images). Returns
    {'image', 'recipe', 'heads', 'loss', 'decoder', 'adversarial', 'forward', 'train'} FLOPs per
    example ('forward': the dual encoder's).
    """
    d, m = config.data, config.model
    text = m.text
    b = batch_size or config.train.batch_size
    image_fwd, image_tokens, image_width = image_forward_flops(config)

    def pooled(tokens: int, count: int = 1) -> float:
        return count * _transformer_forward_flops(tokens, text.width, text.mlp_dim, text.depth)

    def lines(tokens: int, count: int, packed: int) -> float:
        """Word-level pass (one row of `packed` tokens, or `count` padded lines) + line level."""
        words = pooled(packed) if packed else pooled(tokens, count)
        return words + pooled(count)

    ssl = m.recipe == "hierarchical" and bool(m.ssl_head)
    if m.recipe == "hierarchical":
        recipe_fwd = pooled(d.max_title_tokens)
        recipe_fwd += lines(
            d.max_ingredient_tokens, d.max_ingredients, text.packed_ingredient_tokens
        )
        recipe_fwd += lines(
            d.max_instruction_tokens, d.max_instructions, text.packed_instruction_tokens
        )
        recipe_width = text.width if text.merge_linear else 3 * text.width
        if text.merge_linear:  # Linear(3W -> W) over the three components
            recipe_fwd += 2.0 * 3 * text.width * text.width
    elif m.recipe == "transformer":
        tokens = {
            "title": d.max_title_tokens,
            "ingredients": d.max_ingredients * d.max_ingredient_tokens,
            "instructions": d.max_instructions * d.max_instruction_tokens,
        }
        recipe_fwd = sum(pooled(tokens[c]) for c in text.components)
        recipe_width = text.width * len(text.components)
    elif m.recipe == "lstm":
        recipe_fwd, recipe_width = lstm_recipe_forward_flops(config)
    else:
        raise ValueError(f"no FLOPs count for model.recipe={m.recipe!r}")

    heads_fwd = 2.0 * (image_width + recipe_width) * m.embed_dim
    # Similarities: image<->recipe (B x D, both directions) and six SSL pairs (B x text.width).
    loss_fwd = 2.0 * b * 2 * m.embed_dim
    if ssl:
        heads_fwd += 2.0 * 6 * (2 if m.ssl_head == "mlp" else 1) * text.width * text.width
        loss_fwd += 2.0 * b * 6 * text.width
    decoder_fwd = 0.0
    if decoder_trains(config):
        if vocab_size is None:
            raise ValueError("the cross decoder trains: its FLOPs need vocab_size")
        decoder_fwd = cross_decoder_forward_flops(config, vocab_size, image_tokens, image_width)
    forward = image_fwd + recipe_fwd + heads_fwd + loss_fwd + decoder_fwd
    if config.adversarial.enabled and config.adversarial.translate > 0 and vocab_size is None:
        raise ValueError("the image -> recipe heads train: their FLOPs need vocab_size")
    adversarial = adversarial_train_flops(config, vocab_size or 0)["train"]
    return {
        "image": 3 * image_fwd,
        "recipe": 3 * recipe_fwd,
        "heads": 3 * heads_fwd,
        "loss": 3 * loss_fwd,
        "decoder": 3 * decoder_fwd,
        "adversarial": adversarial,
        "forward": forward,
        "train": 3 * forward + adversarial,
    }


def image_forward_flops(config: Any) -> tuple[float, int, int]:
    """`model.image`'s forward FLOPs on one image, its tokens and their width."""
    if config.model.image == "vit":
        return vit_forward_flops(config)
    if config.model.image == "resnet":
        return resnet_forward_flops(config.model.resnet, config.data.image_size)
    raise ValueError(f"no FLOPs count for model.image={config.model.image!r}")


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs XLA counts for a compiled program (forward + backward + optimizer), or None."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def planned_memory_bytes(compiled: Any) -> int | None:
    """Bytes XLA's buffer assignment needs on one device to run `compiled`: arguments + outputs
    (less those aliased to donated arguments) + temporaries; None where not reported."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    used = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return int(used + m.temp_size_in_bytes)


def largest_batch(
    batch: int, devices: int, peak: int | None, limit: int | None, fixed: int
) -> int | None:
    """The global batch that would fill `limit` bytes per device, extrapolated linearly from one
    step's `peak` bytes at global `batch`: what is not the state (`fixed`) grows with the batch.
    An estimate on the low side (gradients and optimizer temporaries are counted as if they grew
    too); None without a peak and a limit."""
    if not peak or not limit or peak <= fixed:
        return None
    per_example = (peak - fixed) / (batch // devices)
    return int((limit - fixed) // per_example) * devices


class CompileCounter:
    """Counts XLA compilations (fresh, or loaded from the persistent cache) while active;
    `cache_hits` counts those of them the persistent compilation cache served.

    with CompileCounter() as c: step(...); assert c.count == 0
    """

    _EVENTS = ("/jax/core/compile/backend_compile_duration",)
    _CACHE_HITS = "/jax/compilation_cache/cache_hits"

    def __init__(self) -> None:
        self.count = 0
        self.cache_hits = 0
        self._active = False
        self._lock = threading.Lock()
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, duration: float, **_: Any) -> None:
        if self._active and event in self._EVENTS:
            with self._lock:
                self.count += 1

    def _on_event(self, event: str, **_: Any) -> None:
        if self._active and event == self._CACHE_HITS:
            with self._lock:
                self.count += 1
                self.cache_hits += 1

    def __enter__(self) -> CompileCounter:
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
