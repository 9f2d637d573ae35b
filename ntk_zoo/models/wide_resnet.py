"""Wide ResNets for CIFAR-sized inputs in Flax Linen: the NTK-literature WRN and Zagoruyko–Komodakis.

Two architectures share the WRN-d-k naming (depth d = 6 * block_size + 4, widths 16k/32k/64k in
three groups with strides 1/2/2, after a 3x3 conv stem with 16 channels):

* `WideResNetNTK` ("wrn_ntk*"): the WRN of the NTK literature (Novak et al. 2020, neural-tangents'
  `stax` example `WideResnet(block_size, k, num_classes)`). No BatchNorm. Each block is
  Relu -> Conv3x3(stride) -> Relu -> Conv3x3, plus a shortcut that is the identity, except in
  every group's *first* block, where it is a strided 3x3 conv of the un-activated input (as in
  neural-tangents, which projects there even when the shape is unchanged; set
  `always_project_first=False` to project only when channels/stride change). Convs have no bias
  and use "SAME" padding (lax convention, as neural-tangents). Global average pool (= its
  `AvgPool((8, 8))` on 32x32 inputs) -> Dense. With `parameterization="ntk"` (default, as
  neural-tangents) weights are N(0, 1) and each layer's output is scaled by W_std / sqrt(fan_in);
  "standard" draws weights N(0, W_std^2 / fan_in) and does not scale (same forward at init,
  different NTK).
* `WideResNet` ("wrn*"): Zagoruyko & Komodakis 2016, pre-activation blocks
  BN -> ReLU -> Conv3x3(stride) -> BN -> ReLU -> Conv3x3, shortcut identity or a 1x1 strided conv
  of the activated input when the shape changes; final BN -> ReLU -> global average pool -> Dense.
  BatchNorm (eps 1e-5) in inference mode in the returned `Model`; explicit torch padding (1, 1);
  bias-free convs; dropout (used in some of the paper's runs) is not modeled.

Default input: 32x32x3 (CIFAR), CIFAR-10 normalization; `image_size` is settable (the tiny
variants use 8x8).

References:
  Zagoruyko & Komodakis. Wide Residual Networks. BMVC 2016 (Tables 1 and 4).
  Novak, Xiao, Hron, Lee, Alemi, Sohl-Dickstein, Schoenholz. Neural Tangents: Fast and Easy
  Infinite Neural Networks in Python. ICLR 2020 (`WideResnet` example).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.models import common
from ntk_zoo.models.common import Differentiate, linen_model
# Same conv (kaiming fan_out init, torch-style symmetric padding) and BatchNorm as torchvision.
from ntk_zoo.models.layers import check_nhwc, torch_bn, torch_conv
from ntk_zoo.models.model import Model

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "NTK_VARIANTS", "NTKBlock", "NTKConv", "NTKDense",
    "PreActBlock", "VARIANTS", "Variant", "WideResNet", "WideResNetNTK", "block_size_of",
    "create", "create_ntk",
]

Parameterization = Literal["ntk", "standard"]

# CIFAR-10 training-set channel statistics.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def block_size_of(depth: int) -> int:
  """Blocks per group of a WRN of `depth` = 6 * block_size + 4.

  Raises:
    ValueError: depth is not of that form.
  """
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f"WRN depth must be 6 * block_size + 4 with block_size >= 1 "
                     f"(10, 16, 22, 28, 40, ...); got {depth}.")
  return (depth - 4) // 6


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of a WRN size table.

  Attributes:
    depth: d in WRN-d-k (d = 6 * block_size + 4).
    k: widening factor.
    image_size: default input height = width.
    num_classes: default number of logits.
    published_params: parameter count reported by the paper (millions, CIFAR-10 head), if any.
  """
  depth: int
  k: int
  image_size: int = 32
  num_classes: int = 10
  published_params: float | None = None

  @property
  def block_size(self) -> int:
    return block_size_of(self.depth)


# ----------------------------------------------------------------------------------------------
# The NTK-literature WRN (neural-tangents' WideResnet).


class NTKConv(nn.Module):
  """A bias-free "SAME" conv in NTK or standard parameterization (neural-tangents `stax.Conv`).

  Attributes:
    features: output channels.
    strides: spatial stride.
    kernel_size: spatial window.
    W_std: weight standard deviation (times 1 / sqrt(fan_in)).
    parameterization: "ntk" (N(0, 1) weights, output scaled by W_std / sqrt(fan_in)) or
      "standard" (N(0, W_std^2 / fan_in) weights, no scaling).
  """
  features: int
  strides: int = 1
  kernel_size: int = 3
  W_std: float = 1.0  # pylint: disable=invalid-name  (neural-tangents' name)
  parameterization: Parameterization = "ntk"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H / strides), ceil(W / strides), features)."""
    scale = self.W_std / math.sqrt(x.shape[-1] * self.kernel_size**2)
    ntk = _check_parameterization(self.parameterization) == "ntk"
    y = nn.Conv(self.features, (self.kernel_size,) * 2, strides=(self.strides,) * 2,
                padding="SAME", use_bias=False,
                kernel_init=nn.initializers.normal(1.0 if ntk else scale), dtype=self.dtype,
                param_dtype=self.dtype, name="conv")(x)
    return y * scale if ntk else y


class NTKDense(nn.Module):
  """Dense layer in NTK or standard parameterization (neural-tangents `stax.Dense`).

  Attributes:
    features: output size.
    W_std: weight standard deviation (times 1 / sqrt(fan_in)).
    b_std: bias standard deviation; None: no bias. Under "ntk" the bias is N(0, 1) times b_std
      (so b_std=0, neural-tangents' WideResnet head, keeps a bias that has no effect).
    parameterization: "ntk" or "standard" (see `NTKConv`).
  """
  features: int
  W_std: float = 1.0  # pylint: disable=invalid-name
  b_std: float | None = 0.0
  parameterization: Parameterization = "ntk"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, C) -> (N, features)."""
    scale = self.W_std / math.sqrt(x.shape[-1])
    ntk = _check_parameterization(self.parameterization) == "ntk"
    kernel = self.param("kernel", nn.initializers.normal(1.0 if ntk else scale),
                        (x.shape[-1], self.features), self.dtype)
    y = jnp.dot(x.astype(self.dtype), kernel)
    if ntk:
      y = y * scale
    if self.b_std is not None:
      b = self.param("bias", nn.initializers.normal(1.0 if ntk else self.b_std),
                     (self.features,), self.dtype)
      y = y + (b * self.b_std if ntk else b)
    return y


def _check_parameterization(p: str) -> str:
  if p not in ("ntk", "standard"):
    raise ValueError(f"parameterization must be 'ntk' or 'standard'; got {p!r}.")
  return p


class NTKBlock(nn.Module):
  """Relu -> Conv3x3(strides) -> Relu -> Conv3x3, plus identity or a strided 3x3 conv shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first conv and of the shortcut conv.
    project: use a 3x3 conv of the (un-activated) input as the shortcut.
  """
  features: int
  strides: int = 1
  project: bool = False
  W_std: float = 1.0  # pylint: disable=invalid-name
  parameterization: Parameterization = "ntk"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H / strides, W / strides, features)."""
    conv = lambda s, name: NTKConv(self.features, s, W_std=self.W_std,  # noqa: E731
                                   parameterization=self.parameterization, dtype=self.dtype,
                                   name=name)
    y = conv(self.strides, "conv1")(nn.relu(x))
    y = conv(1, "conv2")(nn.relu(y))
    if self.project:
      shortcut = conv(self.strides, "shortcut")(x)
    elif self.strides != 1 or x.shape[-1] != self.features:
      raise ValueError(f"Identity shortcut with stride {self.strides} from {x.shape[-1]} to "
                       f"{self.features} channels; set project=True.")
    else:
      shortcut = x
    return y + shortcut


class WideResNetNTK(nn.Module):
  """The NTK-literature Wide ResNet (neural-tangents `WideResnet`), no BatchNorm.

  Attributes:
    block_size: blocks per group (depth = 6 * block_size + 4; WRN-28 has 4).
    k: widening factor (group widths 16k, 32k, 64k).
    num_classes: number of logits.
    W_std: conv and head weight standard deviation.
    b_std: head bias standard deviation (None: no head bias).
    parameterization: "ntk" or "standard".
    always_project_first: conv shortcut in every group's first block (neural-tangents); False:
      only where channels or stride change.
    dtype: parameter and computation dtype.

  Module names: stem, group{g}_{j}/{conv1, conv2[, shortcut]}/conv, head.
  """
  block_size: int
  k: int = 1
  num_classes: int = 10
  W_std: float = 1.0  # pylint: disable=invalid-name
  b_std: float | None = 0.0
  parameterization: Parameterization = "ntk"
  always_project_first: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits of a batch of images.

    Args:
      x: (N, H, W, 3) normalized images (NHWC).
      train: unused (there is no BatchNorm); accepted for a uniform module signature.

    Returns:
      (N, num_classes) logits.
    """
    del train
    check_nhwc(x, "WideResNetNTK")
    if self.block_size < 1:
      raise ValueError(f"block_size must be >= 1; got {self.block_size}.")
    x = x.astype(self.dtype)
    x = NTKConv(16, W_std=self.W_std, parameterization=self.parameterization, dtype=self.dtype,
                name="stem")(x)
    for g, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      for j in range(self.block_size):
        s = stride if j == 0 else 1
        features = int(width * self.k)
        project = j == 0 and (self.always_project_first or s != 1 or x.shape[-1] != features)
        x = NTKBlock(features, s, project, W_std=self.W_std,
                     parameterization=self.parameterization, dtype=self.dtype,
                     name=f"group{g + 1}_{j}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return NTKDense(self.num_classes, W_std=self.W_std, b_std=self.b_std,
                    parameterization=self.parameterization, dtype=self.dtype, name="head")(x)


# ----------------------------------------------------------------------------------------------
# Zagoruyko–Komodakis WRN (pre-activation, BatchNorm).

class PreActBlock(nn.Module):
  """BN-ReLU-Conv3x3(stride)-BN-ReLU-Conv3x3 + (identity | 1x1 conv of the activated input).

  Attributes:
    features: output channels.
    strides: stride of the first conv and of the shortcut conv.
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """(N, H, W, C) -> (N, H / strides, W / strides, features)."""
    o = nn.relu(torch_bn(train, self.dtype, "bn1")(x))
    y = torch_conv(self.features, 3, self.strides, self.dtype, "conv1")(o)
    y = nn.relu(torch_bn(train, self.dtype, "bn2")(y))
    y = torch_conv(self.features, 3, 1, self.dtype, "conv2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = torch_conv(self.features, 1, self.strides, self.dtype, "shortcut")(o)
    return y + x


class WideResNet(nn.Module):
  """Zagoruyko–Komodakis Wide ResNet (pre-activation, BatchNorm).

  Attributes:
    depth: 6 * block_size + 4 (16, 22, 28, 40, ...).
    k: widening factor.
    num_classes: number of logits.
    dtype: parameter and computation dtype.

  Module names: conv1, group{g}_{j}/{bn1, conv1, bn2, conv2[, shortcut]}, bn, fc.
  """
  depth: int
  k: int = 1
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits of a batch of images.

    Args:
      x: (N, H, W, 3) normalized images (NHWC).
      train: batch statistics in BatchNorm (`batch_stats` must then be mutable); False:
        running statistics.

    Returns:
      (N, num_classes) logits.
    """
    n = block_size_of(self.depth)
    check_nhwc(x, "WideResNet")
    x = x.astype(self.dtype)
    x = torch_conv(16, 3, 1, self.dtype, "conv1")(x)
    for g, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      for j in range(n):
        x = PreActBlock(int(width * self.k), stride if j == 0 else 1, dtype=self.dtype,
                        name=f"group{g + 1}_{j}")(x, train)
    x = nn.relu(torch_bn(train, self.dtype, "bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="fc")(x)


# ----------------------------------------------------------------------------------------------
# Factories.


def _model(module: nn.Module, *, image_size: int, seed: int, dtype: Any,
           differentiate: Differentiate, name: str) -> Model:
  variables = common.init_variables(module, image_size, seed=seed, dtype=dtype)
  return linen_model(module, variables, differentiate=differentiate,
                     input_spec=common.image_spec(image_size, dtype, CIFAR10_MEAN, CIFAR10_STD),
                     num_classes=module.num_classes, name=name)


def create(depth: int, k: int, *, num_classes: int = 10, image_size: int = 32, seed: int = 0,
           dtype: Any = jnp.float32, differentiate: Differentiate = "params",
           name: str | None = None) -> Model:
  """A randomly initialized Zagoruyko–Komodakis WRN-depth-k as a `Model`.

  Args:
    depth: 6 * block_size + 4.
    k: widening factor.
    num_classes: number of logits.
    image_size: input height = width.
    seed: PRNG seed of the initialization.
    dtype: parameter, input and computation dtype.
    differentiate: "params" (BatchNorm running statistics closed over as `state`) or "all"
      (see `common.linen_model`).
    name: model name (default "wrn{depth}_{k}").

  Returns:
    A `Model` with `apply(params, x)`: (N, image_size, image_size, 3) -> (N, num_classes), in
    inference mode.
  """
  block_size_of(depth)
  module = WideResNet(depth=depth, k=k, num_classes=num_classes, dtype=dtype)
  return _model(module, image_size=image_size, seed=seed, dtype=dtype,
                differentiate=differentiate, name=name or f"wrn{depth}_{k}")


def create_ntk(depth: int, k: int, *, num_classes: int = 10, image_size: int = 32,
               seed: int = 0, dtype: Any = jnp.float32, differentiate: Differentiate = "params",
               parameterization: Parameterization = "ntk", W_std: float = 1.0,  # noqa: N803
               b_std: float | None = 0.0, always_project_first: bool = True,
               name: str | None = None) -> Model:
  """A randomly initialized NTK-literature WRN-depth-k (no BatchNorm) as a `Model`.

  Args:
    depth: 6 * block_size + 4 (28 for neural-tangents' block_size=4).
    k: widening factor.
    num_classes: number of logits.
    image_size: input height = width.
    seed: PRNG seed of the initialization.
    dtype: parameter, input and computation dtype.
    differentiate: "params" or "all" (the same here: there is no state; `Model.params =
      {"params": ...}` either way).
    parameterization: "ntk" (neural-tangents' default) or "standard".
    W_std: weight standard deviation of every conv and of the head.
    b_std: head bias standard deviation (None: no bias).
    always_project_first: conv shortcut in every group's first block (neural-tangents).
    name: model name (default "wrn_ntk{depth}_{k}").

  Returns:
    A `Model` with `apply(params, x)`: (N, image_size, image_size, 3) -> (N, num_classes) and an
    empty `state`.
  """
  module = WideResNetNTK(block_size=block_size_of(depth), k=k, num_classes=num_classes,
                         W_std=W_std, b_std=b_std, parameterization=parameterization,
                         always_project_first=always_project_first, dtype=dtype)
  return _model(module, image_size=image_size, seed=seed, dtype=dtype,
                differentiate=differentiate, name=name or f"wrn_ntk{depth}_{k}")


# ----------------------------------------------------------------------------------------------
# Variants.

# Zagoruyko & Komodakis 2016, Table 4 (CIFAR-10 parameter counts in millions); "wrn_tiny" is for
# tests.
VARIANTS: dict[str, Variant] = {
    "wrn16_8": Variant(16, 8, published_params=11.0),
    "wrn28_10": Variant(28, 10, published_params=36.5),
    "wrn40_4": Variant(40, 4, published_params=8.9),
    "wrn_tiny": Variant(10, 1, image_size=8),
}

# Novak et al. 2020 (neural-tangents `WideResnet(block_size=4, k, num_classes=10)`); "wrn_ntk_tiny"
# is for tests.
NTK_VARIANTS: dict[str, Variant] = {
    "wrn_ntk28_1": Variant(28, 1),
    "wrn_ntk28_10": Variant(28, 10),
    "wrn_ntk_tiny": Variant(10, 1, image_size=8),
}

_FACTORIES: tuple[tuple[dict[str, Variant], Callable[..., Model]], ...] = (
    (VARIANTS, create), (NTK_VARIANTS, create_ntk))
for _table, _create in _FACTORIES:
  for _name, _v in _table.items():
    common.register_variant(
        _name, _create, _v.depth, _v.k, num_classes=_v.num_classes, image_size=_v.image_size,
        doc=f"Randomly initialized {_name} (WRN-{_v.depth}-{_v.k}) as a `Model`; see "
            f"`ntk_zoo.models.wide_resnet.{_create.__name__}` for the arguments.")
