"""ResNet-18/34/50/101/152 and Wide ResNet-50-2 in Flax Linen, torchvision-compatible.

The architecture follows torchvision's `resnet.py` exactly so that torchvision/timm weights load
and give the same logits:

* NHWC inputs; explicit torch padding everywhere (7x7/2 stem conv pad 3, 3x3/2 max-pool pad 1,
  3x3 convs pad 1, 1x1 convs pad 0). Flax's "SAME" pads stride-2 layers (0, 1) instead of
  (1, 1), which shifts every feature map by one pixel (logits off by ~7 % on ResNet-50).
* Bottleneck blocks put the stride on the 3x3 conv ("ResNet v1.5", torchvision/timm default).
* BatchNorm (eps 1e-5) in inference mode (running statistics) in the returned `Model`;
  `ResNet(...)(x, train=True)` uses batch statistics for training.
* Global average pool, then a Dense head ("fc").

Variables: `params` holds conv kernels, BatchNorm scale/bias and the head (all trainable:
ResNet-50 has 25,557,032 of them, as torchvision reports); `batch_stats` holds the BatchNorm
running mean/var. The `Model` has the layout of `adapters.from_linen`: `model.params =
{"params": ...}`, `model.state = {"batch_stats": ...}`, and `apply` a `BoundApply`, so a Flax
variables file loads with `flax_checkpoints.load_into(model, path)`. The torchvision/timm loader
(`load_torchvision`, `torch_module_name`) lives in `convert/resnet_checkpoints.py` and is
re-exported here.

Usage::

  model = ntk_zoo.models.get("resnet50", num_classes=10)
  logits = model.apply(model.params, model.input_spec.dummy(2))     # (2, 10)
  model = load_torchvision("resnet50.safetensors", arch="resnet50")  # torchvision/timm names

References:
  He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016, Table 1.
  torchvision.models.resnet (v1.5 bottleneck, wide_resnet50_2).
  Zagoruyko & Komodakis. Wide Residual Networks. BMVC 2016 (wide_resnet50_2's width).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.models import common
from ntk_zoo.models.common import IMAGENET_MEAN, IMAGENET_STD, Differentiate, linen_model
from ntk_zoo.models.layers import check_nhwc, torch_bn, torch_conv
from ntk_zoo.models.model import Model

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "VARIANTS", "BasicBlock", "Bottleneck", "ResNet", "Variant",
    "create", "linen_model", "load_torchvision", "make_module", "torch_module_name",
]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the ResNet size table.

  Attributes:
    block: "basic" (two 3x3 convs, expansion 1) or "bottleneck" (1x1-3x3-1x1, expansion 4).
    stage_sizes: number of blocks in each stage.
    num_filters: channels of the stem and of the first stage's blocks (doubled every stage).
    width_per_group: bottleneck inner width is `filters * width_per_group / 64`
      (128 for wide_resnet50_2).
    image_size: default input height = width.
    num_classes: default number of logits.
  """
  block: Literal["basic", "bottleneck"]
  stage_sizes: tuple[int, ...]
  num_filters: int = 64
  width_per_group: int = 64
  image_size: int = 224
  num_classes: int = 1000


class BasicBlock(nn.Module):
  """torchvision BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, + shortcut, relu.

  Attributes:
    filters: output channels.
    strides: stride of the first conv (and of the shortcut projection).
  """
  filters: int
  strides: int = 1
  width_per_group: int = 64  # unused; accepted so both block types share a signature
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """(N, H, W, C) -> (N, H / strides, W / strides, filters)."""
    y = torch_conv(self.filters, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(torch_bn(train, self.dtype, "bn1")(y))
    y = torch_conv(self.filters, 3, 1, self.dtype, "conv2")(y)
    y = torch_bn(train, self.dtype, "bn2")(y)
    return nn.relu(y + _shortcut(x, self.filters, self.strides, train, self.dtype))


class Bottleneck(nn.Module):
  """torchvision Bottleneck (v1.5): conv1x1-bn-relu-conv3x3(stride)-bn-relu-conv1x1-bn, + shortcut.

  Attributes:
    filters: "planes"; the block outputs `4 * filters` channels.
    strides: stride of the 3x3 conv (and of the shortcut projection).
    width_per_group: inner width is `filters * width_per_group // 64`.
  """
  filters: int
  strides: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """(N, H, W, C) -> (N, H / strides, W / strides, 4 * filters)."""
    width = self.filters * self.width_per_group // 64
    out = self.filters * self.expansion
    y = torch_conv(width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(torch_bn(train, self.dtype, "bn1")(y))
    y = torch_conv(width, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(torch_bn(train, self.dtype, "bn2")(y))
    y = torch_conv(out, 1, 1, self.dtype, "conv3")(y)
    y = torch_bn(train, self.dtype, "bn3")(y)
    return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype))


def _shortcut(x: jax.Array, features: int, strides: int, train: bool, dtype: Any) -> jax.Array:
  """Identity, or torchvision's `downsample` (conv1x1(stride)-bn) when the shape changes.

  Must be called inside a compact block's `__call__` (the submodules attach to that block).
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  x = torch_conv(features, 1, strides, dtype, "downsample_conv")(x)
  return torch_bn(train, dtype, "downsample_bn")(x)


_BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """torchvision-compatible ResNet.

  Attributes:
    stage_sizes: blocks per stage; stage i > 0 starts with a stride-2 block.
    block: "basic" or "bottleneck".
    num_classes: number of logits.
    num_filters: stem / first-stage channels (64 in all published variants).
    width_per_group: bottleneck inner width factor (64; 128 for wide_resnet50_2).
    dtype: parameter and computation dtype.

  Module names (`layer{i}_{j}` = torchvision's `layer{i}.{j}`): conv1, bn1, layer1_0/{conv1, bn1,
  conv2, bn2[, conv3, bn3][, downsample_conv, downsample_bn]}, ..., fc.
  """
  stage_sizes: Sequence[int]
  block: Literal["basic", "bottleneck"] = "bottleneck"
  num_classes: int = 1000
  num_filters: int = 64
  width_per_group: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits of a batch of images.

    Args:
      x: (N, H, W, 3) normalized images (NHWC).
      train: use batch statistics in BatchNorm (and update `batch_stats`, which must then be
        mutable). False: running statistics (inference mode).

    Returns:
      (N, num_classes) logits.
    """
    if self.block not in _BLOCKS:
      raise ValueError(f"Unknown block {self.block!r}; expected one of {sorted(_BLOCKS)}.")
    check_nhwc(x, "ResNet")
    block = _BLOCKS[self.block]
    x = x.astype(self.dtype)
    x = torch_conv(self.num_filters, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(torch_bn(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = block(filters=self.num_filters * 2**i, strides=2 if i > 0 and j == 0 else 1,
                  width_per_group=self.width_per_group, dtype=self.dtype,
                  name=f"layer{i + 1}_{j}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="fc")(x)


def make_module(arch: str, *, num_classes: int | None = None,
                dtype: Any = jnp.float32) -> ResNet:
  """The `ResNet` module of a `VARIANTS` entry.

  Args:
    arch: a key of `VARIANTS`, e.g. "resnet50".
    num_classes: number of logits (default: the variant's, 1000 for ImageNet variants).
    dtype: parameter and computation dtype.
  """
  if arch not in VARIANTS:
    raise ValueError(f"Unknown ResNet variant {arch!r}; expected one of {sorted(VARIANTS)}.")
  v = VARIANTS[arch]
  return ResNet(stage_sizes=v.stage_sizes, block=v.block,
                num_classes=v.num_classes if num_classes is None else num_classes,
                num_filters=v.num_filters, width_per_group=v.width_per_group, dtype=dtype)


def create(arch: str, *, num_classes: int | None = None, image_size: int | None = None,
           seed: int = 0, dtype: Any = jnp.float32, differentiate: Differentiate = "params",
           name: str | None = None) -> Model:
  """A randomly initialized (torchvision init) ResNet variant as a `Model`.

  Args:
    arch: a key of `VARIANTS`.
    num_classes: number of logits (default: the variant's).
    image_size: input height = width (default: the variant's; any size >= 32 works for the
      ImageNet variants thanks to the global average pool).
    seed: PRNG seed of the initialization.
    dtype: parameter, input and computation dtype.
    differentiate: "params" or "all" (see `common.linen_model`).
    name: model name (default: `arch`).

  Returns:
    A `Model` with `apply(params, x)`: (N, image_size, image_size, 3) -> (N, num_classes).
  """
  module = make_module(arch, num_classes=num_classes, dtype=dtype)  # Checks `arch`.
  image_size = VARIANTS[arch].image_size if image_size is None else image_size
  variables = common.init_variables(module, image_size, seed=seed, dtype=dtype)
  return linen_model(module, variables, differentiate=differentiate,
                     input_spec=common.image_spec(image_size, dtype, IMAGENET_MEAN, IMAGENET_STD),
                     num_classes=module.num_classes, name=name or arch)


# ----------------------------------------------------------------------------------------------
# Variants.

# He et al. 2016, Table 1 (depth: block type, blocks per stage conv2_x..conv5_x);
# "wide_resnet50_2" is torchvision's (inner bottleneck width doubled); "resnet_tiny" is for tests.
VARIANTS: dict[str, Variant] = {
    "resnet18": Variant("basic", (2, 2, 2, 2)),
    "resnet34": Variant("basic", (3, 4, 6, 3)),
    "resnet50": Variant("bottleneck", (3, 4, 6, 3)),
    "resnet101": Variant("bottleneck", (3, 4, 23, 3)),
    "resnet152": Variant("bottleneck", (3, 8, 36, 3)),
    "wide_resnet50_2": Variant("bottleneck", (3, 4, 6, 3), width_per_group=128),
    "resnet_tiny": Variant("basic", (1, 1), num_filters=8, image_size=32, num_classes=10),
}

for _arch, _v in VARIANTS.items():
  common.register_variant(
      _arch, create, _arch, num_classes=_v.num_classes, image_size=_v.image_size,
      doc=f"Randomly initialized {_arch} ({_v.block} blocks, stages {_v.stage_sizes}) as a "
          f"`Model`.\n\nSee `ntk_zoo.models.resnet.create` for the arguments; defaults: "
          f"num_classes={_v.num_classes}, image_size={_v.image_size}.")


# torchvision / timm checkpoints (built on the above).
from ntk_zoo.models.convert.resnet_checkpoints import load_torchvision, torch_module_name  # noqa: E402
