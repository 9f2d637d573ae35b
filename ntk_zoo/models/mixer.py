"""MLP-Mixer with vit_jax's module names, its variants, and checkpoint loaders.

The module tree and parameter names are those of google-research/vision_transformer
(`vit_jax/models_mixer.py`) and big_vision (`models/mlp_mixer.py`), so their `.npz` files load
without renaming:

    stem/{kernel (p, p, 3, D), bias (D,)}                              patchify convolution
    MixerBlock_{i}/LayerNorm_0/{scale, bias}
    MixerBlock_{i}/token_mixing/Dense_0/{kernel (S, Ds), bias}, Dense_1/{kernel (Ds, S), bias}
    MixerBlock_{i}/LayerNorm_1/{scale, bias}
    MixerBlock_{i}/channel_mixing/Dense_0/{kernel (D, Dc), bias}, Dense_1/{kernel (Dc, D), bias}
    pre_head_layer_norm/{scale, bias}
    head/{kernel (D, C), bias (C,)}

with S = number of patches, Ds = tokens_mlp_dim, Dc = channels_mlp_dim. In a `Model` this tree
is `model.params["params"]` (built by `adapters.from_linen`, as every Linen zoo model; no state).

Loaders (no torch import, nothing is unpickled; in `convert/mixer_checkpoints.py`, re-exported
here): `load_npz` (vit_jax / big_vision files, optionally prefixed `params/` or `opt/target/`,
bfloat16 stored as void) and `load_timm` (timm `MlpMixer` `.safetensors`: `stem.proj`,
`blocks.{i}.{norm1, mlp_tokens.fc1/fc2, norm2, mlp_channels.fc1/fc2}`, `norm`, `head`). The
token-mixing MLP's widths depend on the number of patches, so a checkpoint only loads at the
resolution it was trained at.

Inputs: NHWC images scaled to [-1, 1] (mean = std = 0.5 on [0, 1] images), as for the vit_jax
Mixer checkpoints and timm's `mixer_b16_224.goog_in21k_ft_in1k`. GELU: exact by default (timm);
`load_npz` defaults to the tanh approximation the JAX-trained weights used.

Reference:
  Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS (Table 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.models import common
from ntk_zoo.models.common import ImageSize
from ntk_zoo.models.layers import MlpBlock, layer_norm, patch_embed
from ntk_zoo.models.model import Model

__all__ = [
    "MixerConfig", "MlpMixer", "TINY", "VARIANTS", "WIDTHS", "create", "decode_variant",
    "load_npz", "load_timm", "make_module", "mixer_b16", "mixer_b32", "mixer_l16", "mixer_l32",
    "mixer_s16", "mixer_s32", "mixer_tiny", "param_shapes",
]


@dataclasses.dataclass(frozen=True)
class MixerConfig:
  """Size of an MLP-Mixer.

  Attributes:
    hidden_dim: channels D per patch.
    tokens_mlp_dim: hidden width Ds of the token-mixing MLPs.
    channels_mlp_dim: hidden width Dc of the channel-mixing MLPs.
    num_blocks: number of Mixer blocks.
    patch_size: side p of the square patches.
  """
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  num_blocks: int
  patch_size: int


# --------------------------------------------------------------------------------------------------
# Modules.


class MixerBlock(nn.Module):
  """x + TokenMLP(LN(x)) over patches, then x + ChannelMLP(LN(x)); (N, S, D) -> (N, S, D)."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm(self.dtype, "LayerNorm_0")(x)
    y = jnp.swapaxes(y, 1, 2)  # (N, D, S)
    y = MlpBlock(self.tokens_mlp_dim, self.gelu_approximate, self.dtype, name="token_mixing")(y)
    x = x + jnp.swapaxes(y, 1, 2)
    y = layer_norm(self.dtype, "LayerNorm_1")(x)
    return x + MlpBlock(self.channels_mlp_dim, self.gelu_approximate, self.dtype,
                        name="channel_mixing")(y)


class MlpMixer(nn.Module):
  """MLP-Mixer classifier: (N, H, W, 3) images -> (N, num_classes) logits.

  Attributes:
    config: sizes (see `MixerConfig`).
    num_classes: number of logits C.
    gelu_approximate: tanh-approximate GELU (JAX-trained weights) instead of exact (timm).
    dtype: parameter and computation dtype.

  Initialization: Flax defaults (LeCun-normal kernels, zero biases), including the head (vit_jax
  zero-initializes it, which would make the NTK at initialization see only the head).
  """
  config: MixerConfig
  num_classes: int = 1000
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c = self.config
    x = patch_embed(images, c.hidden_dim, c.patch_size, self.dtype, "stem", "MLP-Mixer")
    for i in range(c.num_blocks):
      x = MixerBlock(c.tokens_mlp_dim, c.channels_mlp_dim, self.gelu_approximate, self.dtype,
                     name=f"MixerBlock_{i}")(x)
    x = layer_norm(self.dtype, "pre_head_layer_norm")(x)
    x = jnp.mean(x, axis=1)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(x)


# --------------------------------------------------------------------------------------------------
# Building models.


def make_module(variant: str | MixerConfig, *, num_classes: int, gelu_approximate: bool = False,
                dtype: Any = jnp.float32) -> MlpMixer:
  """The `MlpMixer` of a variant (see `decode_variant`); arguments as `create`'s."""
  return MlpMixer(decode_variant(variant), num_classes=num_classes,
                  gelu_approximate=gelu_approximate, dtype=dtype)


def param_shapes(variant: str | MixerConfig, *, num_classes: int = 1000,
                 image_size: ImageSize = 224,
                 dtype: Any = jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat `{key: ShapeDtypeStruct}` of a Mixer's parameters, computed without allocating them.

  Args:
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C.
    image_size: side of the square input images (or (height, width)).
    dtype: parameter dtype.

  Returns:
    `{"MixerBlock_0/LayerNorm_0/scale": ShapeDtypeStruct((D,), dtype), ...}`.
  """
  module = make_module(variant, num_classes=num_classes, dtype=dtype)
  return common.param_shapes(module, image_size, dtype)


def create(variant: str | MixerConfig, *, num_classes: int = 1000, image_size: ImageSize = 224,
           seed: int = 0, dtype: Any = jnp.float32, gelu_approximate: bool = False,
           name: str | None = None) -> Model:
  """A randomly initialized MLP-Mixer as a `Model`.

  Args:
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C.
    image_size: side of the square input images (or (height, width)); a multiple of the patch
      size for every pixel to be used.
    seed: PRNG seed of the initialization.
    dtype: parameter and computation dtype.
    gelu_approximate: tanh-approximate GELU instead of exact.
    name: model name (default "mixer_" + variant).

  Returns:
    `Model` with `apply(params, x)`: x (N, H, W, 3) -> logits (N, num_classes), and
    `params = {"params": tree}` (the layout of `adapters.from_linen`).
  """
  module = make_module(variant, num_classes=num_classes, gelu_approximate=gelu_approximate,
                       dtype=dtype)
  return common.create_patch_model(module, image_size=image_size, seed=seed,
                                   name=name or common.default_name("mixer", variant))


# --------------------------------------------------------------------------------------------------
# Variants.

# Width name -> (hidden_dim, tokens_mlp_dim, channels_mlp_dim, num_blocks);
# Tolstikhin et al. 2021, Table 1.
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "S": (512, 256, 2048, 8),
    "B": (768, 384, 3072, 12),
    "L": (1024, 512, 4096, 24),
    "H": (1280, 640, 5120, 32),
}

# The published variants with a registered factory: "B/16" etc.
VARIANTS: dict[str, MixerConfig] = {
    f"{w}/{p}": MixerConfig(*WIDTHS[w], patch_size=p) for w in ("S", "B", "L") for p in (16, 32)
}

# A test-size Mixer: 2 blocks of width 16, 4x4 patches (16 patches on 16x16 images).
TINY = MixerConfig(hidden_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32, num_blocks=2,
                   patch_size=4)


def decode_variant(variant: str | MixerConfig) -> MixerConfig:
  """Parses "B/16" (any width of `WIDTHS`, any patch size, e.g. "H/14") or "tiny[/p]".

  Raises:
    ValueError: for an unknown width or a malformed string.
  """
  return common.decode_variant(variant, config=MixerConfig, widths=WIDTHS, tiny=TINY,
                               family="Mixer")


_TITLE = "Mixer-{0}"

mixer_s16 = common.register_patch_variant("mixer_s16", create, "S/16", title=_TITLE)
mixer_b16 = common.register_patch_variant("mixer_b16", create, "B/16", title=_TITLE)
mixer_l16 = common.register_patch_variant("mixer_l16", create, "L/16", title=_TITLE)
mixer_s32 = common.register_patch_variant("mixer_s32", create, "S/32", title=_TITLE)
mixer_b32 = common.register_patch_variant("mixer_b32", create, "B/32", title=_TITLE)
mixer_l32 = common.register_patch_variant("mixer_l32", create, "L/32", title=_TITLE)
# 2 blocks, width 16, 4x4 patches on 16x16 images, 10 classes: for tests.
mixer_tiny = common.register_patch_variant("mixer_tiny", create, "tiny/4", title=_TITLE,
                                           image_size=16, num_classes=10)


# vit_jax / big_vision / timm checkpoints (built on the above).
from ntk_zoo.models.convert.mixer_checkpoints import load_npz, load_timm  # noqa: E402
