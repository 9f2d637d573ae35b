"""Vision Transformer (ViT) with vit_jax's module names, its variants, and checkpoint loaders.

The module tree and parameter names are those of google-research/vision_transformer
(`vit_jax/models_vit.py`) as stored in its `.npz` files, so those load without renaming:

    embedding/{kernel (p, p, 3, D), bias}                       patchify convolution
    cls (1, 1, D)                                               class token
    Transformer/posembed_input/pos_embedding (1, 1 + h*w, D)    learned position embedding
    Transformer/encoderblock_{i}/LayerNorm_0/{scale, bias}
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/kernel (D, H, D/H)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value}/bias (H, D/H)
    Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/{kernel (H, D/H, D), bias}
    Transformer/encoderblock_{i}/LayerNorm_2/{scale, bias}
    Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/{kernel (D, M), bias}, Dense_1/{kernel, bias}
    Transformer/encoder_norm/{scale, bias}
    pre_logits/{kernel, bias}                                   only with `representation_size`
    head/{kernel (D, C), bias (C,)}

In a `Model` this tree is `model.params["params"]` (built by `adapters.from_linen`, as every Linen
zoo model; there is no state).

Loaders: `load_npz` (vit_jax / big_vision `.npz`) and `load_timm` (timm `.safetensors`), in
`convert/vit_checkpoints.py`, re-exported here.

Inputs are NHWC images normalized as `input_spec` says: the vit_jax/big_vision checkpoints and
timm's `augreg` ViTs take images scaled to [-1, 1], i.e. mean = std = (0.5, 0.5, 0.5) on [0, 1]
images. (Other timm ViTs, e.g. DeiT or `orig_in21k`, use the ImageNet mean/std: replace
`input_spec` for those.)

GELU: timm/torch use the exact (erf) GELU; JAX-trained `.npz` checkpoints were trained with
Flax's default tanh approximation. The factories default to exact (`gelu_approximate=False`),
`load_npz` to the approximation, `load_timm` to exact.

References:
  Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
  Scale", ICLR (Table 1: ViT-Base/Large/Huge).
  Steiner et al. 2021, "How to train your ViT? Data, Augmentation, and Regularization in Vision
  Transformers", arXiv:2106.10270 (the Ti and S sizes, from Touvron et al. 2021, DeiT).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.models import common
from ntk_zoo.models.common import ImageSize
from ntk_zoo.models.layers import MlpBlock, layer_norm, patch_embed
from ntk_zoo.models.model import Model

__all__ = [
    "POSEMB_KEY", "TINY", "VARIANTS", "WIDTHS", "ViTConfig", "VisionTransformer", "create",
    "decode_variant", "load_npz", "load_timm", "make_module", "param_shapes", "vit_b16",
    "vit_b32", "vit_l16", "vit_l32", "vit_s16", "vit_s32", "vit_ti16", "vit_ti32", "vit_tiny",
]

# Where the position embedding lives in our tree (vit_jax's layout).
POSEMB_KEY = "Transformer/posembed_input/pos_embedding"

# vit_jax's kernel initializer (attention projections, MLP).
XAVIER = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Size of a ViT.

  Attributes:
    hidden_size: token width D.
    mlp_dim: hidden width M of the MLP blocks.
    num_heads: attention heads H (D must be divisible by H).
    num_layers: number of encoder blocks.
    patch_size: side p of the square patches.
  """
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int
  patch_size: int


# --------------------------------------------------------------------------------------------------
# Modules.


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head self-attention on (N, L, D) tokens, with Flax's parameter names and shapes.

  `query`, `key`, `value`: DenseGeneral D -> (H, D/H); `out`: DenseGeneral (H, D/H) -> D.
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"hidden_size {d} is not divisible by num_heads {self.num_heads}.")
    head_dim = d // self.num_heads
    proj = functools.partial(
        nn.DenseGeneral, features=(self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        param_dtype=self.dtype, kernel_init=XAVIER)
    q = proj(name="query")(x)  # (N, L, H, d_h)
    k = proj(name="key")(x)
    v = proj(name="value")(x)
    q = q * (head_dim ** -0.5)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
    return nn.DenseGeneral(features=d, axis=(-2, -1), dtype=self.dtype, param_dtype=self.dtype,
                           kernel_init=XAVIER, name="out")(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)); (N, L, D) -> (N, L, D)."""
  mlp_dim: int
  num_heads: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm(self.dtype, "LayerNorm_0")(x)
    y = MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                     name="MultiHeadDotProductAttention_1")(y)
    x = x + y
    y = layer_norm(self.dtype, "LayerNorm_2")(x)
    y = MlpBlock(self.mlp_dim, self.gelu_approximate, self.dtype, kernel_init=XAVIER,
                 bias_init=nn.initializers.normal(stddev=1e-6), name="MlpBlock_3")(y)
    return x + y


class AddPositionEmbs(nn.Module):
  """Adds a learned (1, L, D) `pos_embedding` to (N, L, D) tokens."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]),
                    self.dtype)
    return x + pe


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks, final LayerNorm; (N, L, D) -> (N, L, D)."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = AddPositionEmbs(dtype=self.dtype, name="posembed_input")(x)
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.gelu_approximate, dtype=self.dtype,
                         name=f"encoderblock_{i}")(x)
    return layer_norm(self.dtype, "encoder_norm")(x)


class VisionTransformer(nn.Module):
  """ViT classifier: (N, H, W, 3) images -> (N, num_classes) logits.

  Attributes:
    config: sizes (see `ViTConfig`).
    num_classes: number of logits C.
    classifier: "token" (class token, as vit_jax/timm) or "gap" (mean over patch tokens, no
      class token, as big_vision's `pool_type="gap"`).
    representation_size: if set, a `pre_logits` Dense + tanh of this width before the head
      (vit_jax's ImageNet-21k checkpoints).
    gelu_approximate: tanh-approximate GELU (JAX-trained weights) instead of exact (timm).
    dtype: parameter and computation dtype.

  Initialization follows vit_jax (Xavier-uniform kernels, N(0, 1e-6) MLP biases, N(0, 0.02)
  position embedding, zero class token) except the head, which is LeCun-normal instead of zero so
  that the NTK at initialization involves every layer.
  """
  config: ViTConfig
  num_classes: int = 1000
  classifier: str = "token"
  representation_size: int | None = None
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    c = self.config
    x = patch_embed(images, c.hidden_size, c.patch_size, self.dtype, "embedding", "ViT")
    n, _, d = x.shape
    if self.classifier == "token":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, d), self.dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)), x], axis=1)
    elif self.classifier != "gap":
      raise ValueError(f"Unknown classifier {self.classifier!r}; use 'token' or 'gap'.")
    x = Encoder(c.num_layers, c.mlp_dim, c.num_heads, self.gelu_approximate, dtype=self.dtype,
                name="Transformer")(x)
    x = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
    if self.representation_size is not None:
      x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, param_dtype=self.dtype,
                            name="pre_logits")(x))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(x)


# --------------------------------------------------------------------------------------------------
# Building models.


def make_module(variant: str | ViTConfig, *, num_classes: int, classifier: str = "token",
                representation_size: int | None = None, gelu_approximate: bool = False,
                dtype: Any = jnp.float32) -> VisionTransformer:
  """The `VisionTransformer` of a variant (see `decode_variant`); arguments as `create`'s."""
  return VisionTransformer(decode_variant(variant), num_classes=num_classes, classifier=classifier,
                           representation_size=representation_size,
                           gelu_approximate=gelu_approximate, dtype=dtype)


def param_shapes(variant: str | ViTConfig, *, num_classes: int = 1000,
                 image_size: ImageSize = 224, classifier: str = "token",
                 representation_size: int | None = None,
                 dtype: Any = jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat `{key: ShapeDtypeStruct}` of a ViT's parameters, computed without allocating them.

  Args:
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C.
    image_size: side of the square input images (or (height, width)).
    classifier: "token" or "gap".
    representation_size: width of `pre_logits`, or None.
    dtype: parameter dtype.

  Returns:
    `{"Transformer/encoder_norm/scale": ShapeDtypeStruct((D,), dtype), ...}`.
  """
  module = make_module(variant, num_classes=num_classes, classifier=classifier,
                       representation_size=representation_size, dtype=dtype)
  return common.param_shapes(module, image_size, dtype)


def create(variant: str | ViTConfig, *, num_classes: int = 1000, image_size: ImageSize = 224,
           seed: int = 0, dtype: Any = jnp.float32, gelu_approximate: bool = False,
           classifier: str = "token", representation_size: int | None = None,
           name: str | None = None) -> Model:
  """A randomly initialized ViT as a `Model`.

  Args:
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C.
    image_size: side of the square input images (or (height, width)); must be a multiple of
      the patch size for every pixel to be used.
    seed: PRNG seed of the initialization.
    dtype: parameter and computation dtype.
    gelu_approximate: tanh-approximate GELU instead of exact.
    classifier: "token" or "gap" (see `VisionTransformer`).
    representation_size: width of a `pre_logits` layer, or None.
    name: model name (default "vit_" + variant).

  Returns:
    `Model` with `apply(params, x)`: x (N, H, W, 3) -> logits (N, num_classes), and
    `params = {"params": tree}` (the layout of `adapters.from_linen`).
  """
  module = make_module(variant, num_classes=num_classes, classifier=classifier,
                       representation_size=representation_size,
                       gelu_approximate=gelu_approximate, dtype=dtype)
  return common.create_patch_model(module, image_size=image_size, seed=seed,
                                   name=name or common.default_name("vit", variant))


# --------------------------------------------------------------------------------------------------
# Variants.

# Width name -> (hidden_size, mlp_dim, num_heads, num_layers).
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 768, 3, 12),     # Steiner et al. 2021 (DeiT-Ti).
    "S": (384, 1536, 6, 12),     # Steiner et al. 2021 (DeiT-S).
    "B": (768, 3072, 12, 12),    # Dosovitskiy et al. 2021, Table 1.
    "L": (1024, 4096, 16, 24),   # Dosovitskiy et al. 2021, Table 1.
    "H": (1280, 5120, 16, 32),   # Dosovitskiy et al. 2021, Table 1.
}

# The published variants with a registered factory: "B/16" etc.
VARIANTS: dict[str, ViTConfig] = {
    f"{w}/{p}": ViTConfig(*WIDTHS[w], patch_size=p) for w in ("Ti", "S", "B", "L") for p in (16, 32)
}

# A test-size ViT: 2 blocks of width 16, 2 heads, 4x4 patches (16 patches on 16x16 images).
TINY = ViTConfig(hidden_size=16, mlp_dim=32, num_heads=2, num_layers=2, patch_size=4)


def decode_variant(variant: str | ViTConfig) -> ViTConfig:
  """Parses "B/16" (any width of `WIDTHS`, any patch size, e.g. "B/8", "H/14") or "tiny[/p]".

  Raises:
    ValueError: for an unknown width or a malformed string.
  """
  return common.decode_variant(variant, config=ViTConfig, widths=WIDTHS, tiny=TINY, family="ViT")


_TITLE = "ViT-{0} (class token, no pre_logits)"

vit_ti16 = common.register_patch_variant("vit_ti16", create, "Ti/16", title=_TITLE)
vit_s16 = common.register_patch_variant("vit_s16", create, "S/16", title=_TITLE)
vit_b16 = common.register_patch_variant("vit_b16", create, "B/16", title=_TITLE)
vit_l16 = common.register_patch_variant("vit_l16", create, "L/16", title=_TITLE)
vit_ti32 = common.register_patch_variant("vit_ti32", create, "Ti/32", title=_TITLE)
vit_s32 = common.register_patch_variant("vit_s32", create, "S/32", title=_TITLE)
vit_b32 = common.register_patch_variant("vit_b32", create, "B/32", title=_TITLE)
vit_l32 = common.register_patch_variant("vit_l32", create, "L/32", title=_TITLE)
# 2 blocks, width 16, 2 heads, 4x4 patches on 16x16 images, 10 classes: for tests.
vit_tiny = common.register_patch_variant("vit_tiny", create, "tiny/4", title=_TITLE,
                                         image_size=16, num_classes=10)


# vit_jax / big_vision / timm checkpoints (built on the above).
from ntk_zoo.models.convert.vit_checkpoints import load_npz, load_timm  # noqa: E402
