"""Layers more than one zoo architecture uses.

* torch-style convolution and BatchNorm (`torch_conv`, `torch_bn`): ResNet and the
  Zagoruyko–Komodakis WRN, so that torchvision weights load and give torch's logits.
* `MlpBlock` and `layer_norm`: the transformer MLP and LayerNorm of ViT and Mixer.
* `patch_embed`: the patchify convolution of ViT and Mixer (`check_patch_grid` checks the sides).

The functions create their submodule inside the caller's compact `__call__`, under the `name`
given: the parameters sit in the caller's tree (`layer1_0/conv1/kernel`, `embedding/kernel`)
exactly as if the caller had built the Flax layer itself.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision initializes convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
TORCH_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free conv with torch's explicit symmetric padding `kernel // 2`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=TORCH_CONV_INIT,
                 dtype=dtype, param_dtype=dtype, name=name)


def torch_bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 (= Flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=dtype, name=name)


def check_nhwc(x: jax.Array, model: str) -> None:
  """Raises ValueError unless x is a 4-D (N, H, W, C) batch."""
  if x.ndim != 4:
    raise ValueError(f"{model} expects NHWC inputs (N, H, W, C); got shape {x.shape}.")


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(F) along the last axis: (..., F) -> (..., F).

  Attributes:
    mlp_dim: hidden width.
    gelu_approximate: tanh-approximate GELU instead of exact.
    dtype: parameter and computation dtype.
    kernel_init, bias_init: the two Dense layers' initializers (Flax's defaults; ViT passes
      vit_jax's Xavier-uniform / N(0, 1e-6)).
  """
  mlp_dim: int
  gelu_approximate: bool = False
  dtype: Any = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.dtype,
                              kernel_init=self.kernel_init, bias_init=self.bias_init)
    y = dense(self.mlp_dim, name="Dense_0")(x)
    y = nn.gelu(y, approximate=self.gelu_approximate)
    return dense(x.shape[-1], name="Dense_1")(y)


def layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  """vit_jax's LayerNorm: eps 1e-6, two-pass variance."""
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=dtype,
                      name=name)


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


def patch_embed(images: jax.Array, features: int, patch_size: int, dtype: Any, name: str,
                model: str) -> jax.Array:
  """(N, H, W, 3) images -> (N, H/p * W/p, features) tokens by a p×p stride-p conv `name`.

  Raises:
    ValueError: the sides are not positive multiples of p (`check_patch_grid`, naming `model`).
  """
  p = patch_size
  check_patch_grid(images.shape[-3], images.shape[-2], p, model)
  x = nn.Conv(features, (p, p), strides=(p, p), padding="VALID", dtype=dtype, param_dtype=dtype,
              name=name)(images)
  n, h, w, d = x.shape
  return jnp.reshape(x, (n, h * w, d))
