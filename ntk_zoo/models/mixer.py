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

Loaders (no torch import, nothing is unpickled): `load_npz` (vit_jax / big_vision files,
optionally prefixed `params/` or `opt/target/`, bfloat16 stored as void) and `load_timm` (timm
`MlpMixer` `.safetensors`: `stem.proj`, `blocks.{i}.{norm1, mlp_tokens.fc1/fc2, norm2,
mlp_channels.fc1/fc2}`, `norm`, `head`). The token-mixing MLP's widths depend on the number of
patches, so a checkpoint only loads at the resolution it was trained at.

Inputs: NHWC images scaled to [-1, 1] (mean = std = 0.5 on [0, 1] images), as for the vit_jax
Mixer checkpoints and timm's `mixer_b16_224.goog_in21k_ft_in1k`. GELU: exact by default (timm);
`load_npz` defaults to the tanh approximation the JAX-trained weights used.

Reference:
  Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS (Table 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models import checkpoints, npz_convert, timm_convert
from ntk_zoo.models.adapters import from_linen
from ntk_zoo.models.model import InputSpec, Model
from ntk_zoo.models.registry import register
from ntk_zoo.models.vit import check_patch_grid, init_params

__all__ = [
    "MixerConfig", "MlpMixer", "TINY", "VARIANTS", "create", "decode_variant", "load_npz",
    "load_timm", "mixer_b16", "mixer_b32", "mixer_l16", "mixer_l32", "mixer_s16", "mixer_s32",
    "mixer_tiny", "param_shapes",
]

# Preprocessing of the vit_jax / timm Mixer checkpoints: [0, 1] -> [-1, 1].
MIXER_MEAN = (0.5, 0.5, 0.5)
MIXER_STD = (0.5, 0.5, 0.5)


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

  Args:
    variant: "{width}/{patch}" string, or a `MixerConfig` (returned as is).

  Returns:
    The `MixerConfig`.

  Raises:
    ValueError: for an unknown width or a malformed string.
  """
  if isinstance(variant, MixerConfig):
    return variant
  m = re.fullmatch(r"([A-Za-z]+)(?:/(\d+))?", variant.strip())
  if m is None:
    raise ValueError(f"Cannot parse Mixer variant {variant!r}; expected e.g. 'B/16' or 'tiny'.")
  width, patch = m.group(1), m.group(2)
  if width.lower() == "tiny":
    return TINY if patch is None else dataclasses.replace(TINY, patch_size=int(patch))
  if width not in WIDTHS or patch is None:
    raise ValueError(f"Unknown Mixer variant {variant!r}. Use '<width>/<patch>' with width in "
                     f"{sorted(WIDTHS)} (e.g. 'B/16'), or 'tiny'.")
  return MixerConfig(*WIDTHS[width], patch_size=int(patch))


# --------------------------------------------------------------------------------------------------
# Modules.


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(last dim) along the last axis of x (..., F) -> (..., F)."""
  mlp_dim: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.dtype)
    y = dense(self.mlp_dim, name="Dense_0")(x)
    y = nn.gelu(y, approximate=self.gelu_approximate)
    return dense(x.shape[-1], name="Dense_1")(y)


class MixerBlock(nn.Module):
  """x + TokenMLP(LN(x)) over patches, then x + ChannelMLP(LN(x)); (N, S, D) -> (N, S, D)."""
  tokens_mlp_dim: int
  channels_mlp_dim: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ln = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False, dtype=self.dtype,
                           param_dtype=self.dtype)
    y = ln(name="LayerNorm_0")(x)
    y = jnp.swapaxes(y, 1, 2)  # (N, D, S)
    y = MlpBlock(self.tokens_mlp_dim, self.gelu_approximate, self.dtype, name="token_mixing")(y)
    x = x + jnp.swapaxes(y, 1, 2)
    y = ln(name="LayerNorm_1")(x)
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
    p = c.patch_size
    check_patch_grid(images.shape[-3], images.shape[-2], p, "MLP-Mixer")
    x = nn.Conv(c.hidden_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.dtype, name="stem")(images)
    n, h, w, d = x.shape
    x = jnp.reshape(x, (n, h * w, d))
    for i in range(c.num_blocks):
      x = MixerBlock(c.tokens_mlp_dim, c.channels_mlp_dim, self.gelu_approximate, self.dtype,
                     name=f"MixerBlock_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=self.dtype,
                     param_dtype=self.dtype, name="pre_head_layer_norm")(x)
    x = jnp.mean(x, axis=1)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(x)


# --------------------------------------------------------------------------------------------------
# Building models.


def _image_shape(image_size: int | tuple[int, int]) -> tuple[int, int, int]:
  if isinstance(image_size, int):
    return (image_size, image_size, 3)
  return (int(image_size[0]), int(image_size[1]), 3)


def _module(variant: str | MixerConfig, *, num_classes: int, gelu_approximate: bool = False,
            dtype: Any = jnp.float32) -> MlpMixer:
  return MlpMixer(decode_variant(variant), num_classes=num_classes,
                  gelu_approximate=gelu_approximate, dtype=dtype)


def param_shapes(variant: str | MixerConfig, *, num_classes: int = 1000,
                 image_size: int | tuple[int, int] = 224,
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
  module = _module(variant, num_classes=num_classes, dtype=dtype)
  x = jax.ShapeDtypeStruct((1, *_image_shape(image_size)), dtype)
  return checkpoints.flatten(jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"])


def _default_name(variant: str | MixerConfig) -> str:
  return f"mixer_{variant}" if isinstance(variant, str) else "mixer"


def _to_model(module: MlpMixer, params: Any, image_size: int | tuple[int, int],
              name: str) -> Model:
  """`from_linen` of `module` with `params` (the inner "params" tree) as `{"params": params}`.

  Equal modules share one `apply` function, hence one `jax.jit` cache (see `BoundApply`).
  """
  spec = InputSpec(shape=_image_shape(image_size), dtype=module.dtype, mean=MIXER_MEAN,
                   std=MIXER_STD)
  return from_linen(module, {"params": params}, input_spec=spec,
                    num_classes=module.num_classes, name=name)


def create(variant: str | MixerConfig, *, num_classes: int = 1000,
           image_size: int | tuple[int, int] = 224, seed: int = 0, dtype: Any = jnp.float32,
           gelu_approximate: bool = False, name: str | None = None) -> Model:
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
  module = _module(variant, num_classes=num_classes, gelu_approximate=gelu_approximate,
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
      f"Mixer-{variant} as a randomly initialized `Model`.\n\n"
      f"Args: num_classes (default {default_num_classes}), image_size (default "
      f"{default_image_size}), seed, dtype, gelu_approximate: see `mixer.create`.\n\n"
      "Returns: `Model`; apply(params, x): (N, H, W, 3) -> (N, num_classes).")
  return register(name)(factory)


mixer_s16 = _registered("mixer_s16", "S/16")
mixer_b16 = _registered("mixer_b16", "B/16")
mixer_l16 = _registered("mixer_l16", "L/16")
mixer_s32 = _registered("mixer_s32", "S/32")
mixer_b32 = _registered("mixer_b32", "B/32")
mixer_l32 = _registered("mixer_l32", "L/32")
# 2 blocks, width 16, 4x4 patches on 16x16 images, 10 classes: for tests.
mixer_tiny = _registered("mixer_tiny", "tiny/4", default_image_size=16, default_num_classes=10)


# --------------------------------------------------------------------------------------------------
# Checkpoints.


def _finish_load(flat: dict[str, np.ndarray], *, config: MixerConfig, num_classes: int | None,
                 image_size: int | tuple[int, int], gelu_approximate: bool, dtype: Any,
                 source: str, name: str, origin: dict[str, str] | None = None) -> Model:
  """Checks `flat` (our keys) against the model's parameters and builds the `Model`."""
  if num_classes is None:
    num_classes = int(flat["head/bias"].shape[0]) if "head/bias" in flat else 1000
  expected = param_shapes(config, num_classes=num_classes, image_size=image_size)
  if origin is None:
    flat = npz_convert.match_names(flat, expected)
  else:
    flat = timm_convert.annotate_unexpected(flat, origin, expected)
  checkpoints.check_matches(expected, flat, source=source)
  module = _module(config, num_classes=num_classes, gelu_approximate=gelu_approximate,
                   dtype=dtype)
  params = checkpoints.unflatten({k: jnp.asarray(flat[k], dtype) for k in expected})
  return _to_model(module, params, image_size, name)


def load_npz(path: str | os.PathLike, *, variant: str | MixerConfig,
             num_classes: int | None = None, image_size: int | tuple[int, int] = 224,
             gelu_approximate: bool = True, dtype: Any = jnp.float32) -> Model:
  """Loads a vit_jax or big_vision MLP-Mixer `.npz` checkpoint.

  Args:
    path: the `.npz` file (keys optionally prefixed `params/` or `opt/target/`; other entries,
      e.g. optimizer state, are ignored; bfloat16-as-void decoded).
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C; default: the size of the file's head.
    image_size: input side; must give the number of patches the checkpoint was trained with.
    gelu_approximate: tanh-approximate GELU (True for JAX-trained weights).
    dtype: parameter and computation dtype.

  Returns:
    `Model` with the file's weights; apply(params, x): (N, H, W, 3) -> (N, C).

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  config = decode_variant(variant)
  flat = npz_convert.read_google_npz(path, anchor="stem/kernel", scanned=[("", "MixerBlock")])
  return _finish_load(flat, config=config, num_classes=num_classes, image_size=image_size,
                      gelu_approximate=gelu_approximate, dtype=dtype, source=os.fspath(path),
                      name=_default_name(variant))


def _timm_rules() -> list[timm_convert.Rule]:
  """timm `MlpMixer` state-dict names -> our keys."""
  blk = "MixerBlock_{0}"
  r, tc = timm_convert.Rule, timm_convert
  return [
      r(r"stem\.proj", tc.conv("stem")),
      r(r"blocks\.(\d+)\.norm1", tc.layer_norm(blk + "/LayerNorm_0")),
      r(r"blocks\.(\d+)\.mlp_tokens\.fc1", tc.dense(blk + "/token_mixing/Dense_0")),
      r(r"blocks\.(\d+)\.mlp_tokens\.fc2", tc.dense(blk + "/token_mixing/Dense_1")),
      r(r"blocks\.(\d+)\.norm2", tc.layer_norm(blk + "/LayerNorm_1")),
      r(r"blocks\.(\d+)\.mlp_channels\.fc1", tc.dense(blk + "/channel_mixing/Dense_0")),
      r(r"blocks\.(\d+)\.mlp_channels\.fc2", tc.dense(blk + "/channel_mixing/Dense_1")),
      r("norm", tc.layer_norm("pre_head_layer_norm")),
      r("head", tc.dense("head")),
  ]


def load_timm(path: str | os.PathLike, *, variant: str | MixerConfig,
              num_classes: int | None = None, image_size: int | tuple[int, int] = 224,
              gelu_approximate: bool = False, dtype: Any = jnp.float32) -> Model:
  """Loads a timm `MlpMixer` `.safetensors` state dict (read with `safetensors.numpy`, no torch).

  Args:
    path: the `.safetensors` file (`stem.proj`, `blocks.{i}.{norm1, mlp_tokens.fc1/fc2, norm2,
      mlp_channels.fc1/fc2}`, `norm`, `head`).
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C; default: the size of the file's head.
    image_size: input side; must give the number of patches the checkpoint was trained with.
    gelu_approximate: False (timm uses exact GELU).
    dtype: parameter and computation dtype.

  Returns:
    `Model` with the file's weights; apply(params, x): (N, H, W, 3) -> (N, C).

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  config = decode_variant(variant)
  flat, origin = timm_convert.convert(checkpoints.read_safetensors(path), _timm_rules())
  return _finish_load(flat, config=config, num_classes=num_classes, image_size=image_size,
                      gelu_approximate=gelu_approximate, dtype=dtype, source=os.fspath(path),
                      name=_default_name(variant), origin=origin)
