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
`vit_checkpoints.py`, re-exported here.

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
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models import checkpoints
from ntk_zoo.models.adapters import from_linen
from ntk_zoo.models.model import InputSpec, Model
from ntk_zoo.models.registry import register

__all__ = [
    "TINY", "VARIANTS", "ViTConfig", "VisionTransformer", "create", "decode_variant",
    "init_params", "load_npz", "load_timm", "param_shapes", "vit_b16", "vit_b32", "vit_l16",
    "vit_l32", "vit_s16", "vit_s32", "vit_ti16", "vit_ti32", "vit_tiny",
]

# Where the position embedding lives in our tree (vit_jax's layout).
POSEMB_KEY = "Transformer/posembed_input/pos_embedding"

# Preprocessing of vit_jax / big_vision / timm augreg checkpoints: [0, 1] -> [-1, 1].
AUGREG_MEAN = (0.5, 0.5, 0.5)
AUGREG_STD = (0.5, 0.5, 0.5)


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

  Args:
    variant: "{width}/{patch}" string, or a `ViTConfig` (returned as is).

  Returns:
    The `ViTConfig`.

  Raises:
    ValueError: for an unknown width or a malformed string.
  """
  if isinstance(variant, ViTConfig):
    return variant
  m = re.fullmatch(r"([A-Za-z]+)(?:/(\d+))?", variant.strip())
  if m is None:
    raise ValueError(f"Cannot parse ViT variant {variant!r}; expected e.g. 'B/16' or 'tiny'.")
  width, patch = m.group(1), m.group(2)
  if width.lower() == "tiny":
    return TINY if patch is None else dataclasses.replace(TINY, patch_size=int(patch))
  if width not in WIDTHS or patch is None:
    raise ValueError(f"Unknown ViT variant {variant!r}. Use '<width>/<patch>' with width in "
                     f"{sorted(WIDTHS)} (e.g. 'B/16'), or 'tiny'.")
  return ViTConfig(*WIDTHS[width], patch_size=int(patch))


# --------------------------------------------------------------------------------------------------
# Modules.


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(D) on (N, L, D) tokens."""
  mlp_dim: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(
        nn.Dense, dtype=self.dtype, param_dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    y = dense(self.mlp_dim, name="Dense_0")(x)
    y = nn.gelu(y, approximate=self.gelu_approximate)
    return dense(x.shape[-1], name="Dense_1")(y)


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
        param_dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())
    q = proj(name="query")(x)  # (N, L, H, d_h)
    k = proj(name="key")(x)
    v = proj(name="value")(x)
    q = q * (head_dim ** -0.5)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
    return nn.DenseGeneral(features=d, axis=(-2, -1), dtype=self.dtype, param_dtype=self.dtype,
                           kernel_init=nn.initializers.xavier_uniform(), name="out")(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)); (N, L, D) -> (N, L, D)."""
  mlp_dim: int
  num_heads: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ln = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False, dtype=self.dtype,
                           param_dtype=self.dtype)
    y = ln(name="LayerNorm_0")(x)
    y = MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                     name="MultiHeadDotProductAttention_1")(y)
    x = x + y
    y = ln(name="LayerNorm_2")(x)
    y = MlpBlock(self.mlp_dim, self.gelu_approximate, dtype=self.dtype, name="MlpBlock_3")(y)
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
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=self.dtype,
                        param_dtype=self.dtype, name="encoder_norm")(x)


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
    p = c.patch_size
    check_patch_grid(images.shape[-3], images.shape[-2], p, "ViT")
    x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.dtype, name="embedding")(images)
    n, h, w, d = x.shape
    x = jnp.reshape(x, (n, h * w, d))
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


def check_patch_grid(height: int, width: int, patch_size: int, model: str) -> None:
  """Raises ValueError unless the image sides are positive multiples of the patch size.

  A patch model (ViT, Mixer) cuts the image into non-overlapping p×p patches; a side smaller
  than p has no patch, and a side that is not a multiple of p silently drops pixels.
  """
  bad = [s for s in (height, width) if s < patch_size or s % patch_size]
  if not bad:
    return
  near = [max(patch_size, patch_size * round(s / patch_size)) for s in (height, width)]
  raise ValueError(
      f"{model} with {patch_size}x{patch_size} patches needs image sides that are positive "
      f"multiples of {patch_size} (minimum {patch_size}: {patch_size}, {2 * patch_size}, "
      f"{3 * patch_size}, ...); got {height}x{width}. Fix: use image_size="
      f"{near[0] if near[0] == near[1] else tuple(near)} (or resize the images).")


def _module(variant: str | ViTConfig, *, num_classes: int, classifier: str = "token",
            representation_size: int | None = None, gelu_approximate: bool = False,
            dtype: Any = jnp.float32) -> VisionTransformer:
  return VisionTransformer(decode_variant(variant), num_classes=num_classes, classifier=classifier,
                           representation_size=representation_size,
                           gelu_approximate=gelu_approximate, dtype=dtype)


def _image_shape(image_size: int | tuple[int, int]) -> tuple[int, int, int]:
  if isinstance(image_size, int):
    return (image_size, image_size, 3)
  return (int(image_size[0]), int(image_size[1]), 3)


def param_shapes(variant: str | ViTConfig, *, num_classes: int = 1000,
                 image_size: int | tuple[int, int] = 224, classifier: str = "token",
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
  module = _module(variant, num_classes=num_classes, classifier=classifier,
                   representation_size=representation_size, dtype=dtype)
  x = jax.ShapeDtypeStruct((1, *_image_shape(image_size)), dtype)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  return checkpoints.flatten(shapes["params"])


def _default_name(variant: str | ViTConfig) -> str:
  return f"vit_{variant}" if isinstance(variant, str) else "vit"


def _to_model(module: VisionTransformer, params: Any, image_size: int | tuple[int, int],
              name: str) -> Model:
  """`from_linen` of `module` with `params` (the inner "params" tree) as `{"params": params}`.

  Equal modules share one `apply` function, hence one `jax.jit` cache (see `BoundApply`).
  """
  spec = InputSpec(shape=_image_shape(image_size), dtype=module.dtype, mean=AUGREG_MEAN,
                   std=AUGREG_STD)
  return from_linen(module, {"params": params}, input_spec=spec,
                    num_classes=module.num_classes, name=name)


# Flax's `init` draws one threefry sample per parameter. Measured (CPU seconds, 2 shared cores
# under load): the tiny ViT initializes in ~5.5 s eagerly (one compilation per op and shape) but
# ~1.6 s jit-compiled at XLA optimization level 0; for ViT-B/16 eager (~8 s) beats the unoptimized
# program (~13 s), whose 86M draws then run slowly. So small models take the unoptimized jit
# (compiled once per configuration), large ones run eagerly.
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
_JIT_INIT_MAX_PARAMS = 2_000_000


@functools.cache
def _compiled_init(module: nn.Module, shape: tuple[int, ...], dtype: Any):
  """`key -> params` compiled at `INIT_COMPILER_OPTIONS`, or None for a large model."""
  x = jax.ShapeDtypeStruct(shape, dtype)
  lowered = jax.jit(lambda k: module.lazy_init(k, x)["params"]).lower(jax.random.PRNGKey(0))
  size = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(lowered.out_info))
  return lowered.compile(INIT_COMPILER_OPTIONS) if size <= _JIT_INIT_MAX_PARAMS else None


def init_params(module: nn.Module, x: jax.ShapeDtypeStruct, seed: int) -> Any:
  """The "params" collection of `module.lazy_init(PRNGKey(seed), x)` (no forward computation).

  Args:
    module: a Linen module with `__call__(images)`.
    x: shape/dtype of a batch of inputs.
    seed: PRNG seed.

  Returns:
    The parameter tree; the same values for the same (module, x, seed) on every call.
  """
  key = jax.random.PRNGKey(seed)
  compiled = _compiled_init(module, tuple(x.shape), jnp.dtype(x.dtype))
  if compiled is not None:
    return compiled(key)
  return module.lazy_init(key, x)["params"]


def create(variant: str | ViTConfig, *, num_classes: int = 1000,
           image_size: int | tuple[int, int] = 224, seed: int = 0, dtype: Any = jnp.float32,
           gelu_approximate: bool = False, classifier: str = "token",
           representation_size: int | None = None, name: str | None = None) -> Model:
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
  module = _module(variant, num_classes=num_classes, classifier=classifier,
                   representation_size=representation_size, gelu_approximate=gelu_approximate,
                   dtype=dtype)
  params = init_params(module, jax.ShapeDtypeStruct((1, *_image_shape(image_size)), dtype), seed)
  return _to_model(module, params, image_size, name or _default_name(variant))


def _registered(name: str, variant: str, default_image_size: int = 224,
                default_num_classes: int = 1000):
  """Registers `name` as a factory of `variant` and returns the factory."""

  def factory(*, num_classes: int = default_num_classes,
              image_size: int | tuple[int, int] = default_image_size, seed: int = 0,
              dtype: Any = jnp.float32, gelu_approximate: bool = False) -> Model:
    return create(variant, num_classes=num_classes, image_size=image_size, seed=seed, dtype=dtype,
                  gelu_approximate=gelu_approximate, name=name)

  factory.__name__ = factory.__qualname__ = name
  factory.__doc__ = (
      f"ViT-{variant} (class token, no pre_logits) as a randomly initialized `Model`.\n\n"
      f"Args: num_classes (default {default_num_classes}), image_size (default "
      f"{default_image_size}), seed, dtype, gelu_approximate: see `vit.create`.\n\n"
      "Returns: `Model`; apply(params, x): (N, H, W, 3) -> (N, num_classes).")
  return register(name)(factory)


vit_ti16 = _registered("vit_ti16", "Ti/16")
vit_s16 = _registered("vit_s16", "S/16")
vit_b16 = _registered("vit_b16", "B/16")
vit_l16 = _registered("vit_l16", "L/16")
vit_ti32 = _registered("vit_ti32", "Ti/32")
vit_s32 = _registered("vit_s32", "S/32")
vit_b32 = _registered("vit_b32", "B/32")
vit_l32 = _registered("vit_l32", "L/32")
# 2 blocks, width 16, 2 heads, 4x4 patches on 16x16 images, 10 classes: for tests.
vit_tiny = _registered("vit_tiny", "tiny/4", default_image_size=16, default_num_classes=10)


from ntk_zoo.models.vit_checkpoints import load_npz, load_timm  # noqa: E402  (built on the above)
