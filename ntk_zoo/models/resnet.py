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
variables file loads with `flax_checkpoints.load_into(model, path)`.

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
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.models import checkpoints, torch_convert
from ntk_zoo.models.adapters import from_linen
from ntk_zoo.models.model import InputSpec, Model
from ntk_zoo.models.registry import register
from ntk_zoo.ntk.typing import PyTree

Differentiate = Literal["params", "all"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

# torchvision initializes convs with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free conv with torch's explicit symmetric padding `kernel // 2`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_conv_init,
                 dtype=dtype, param_dtype=dtype, name=name)


def _bn(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 (= Flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=dtype, name=name)


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
    y = _conv(self.filters, 3, self.strides, self.dtype, "conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(self.filters, 3, 1, self.dtype, "conv2")(y)
    y = _bn(train, self.dtype, "bn2")(y)
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
    y = _conv(width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(_bn(train, self.dtype, "bn1")(y))
    y = _conv(width, 3, self.strides, self.dtype, "conv2")(y)
    y = nn.relu(_bn(train, self.dtype, "bn2")(y))
    y = _conv(out, 1, 1, self.dtype, "conv3")(y)
    y = _bn(train, self.dtype, "bn3")(y)
    return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype))


def _shortcut(x: jax.Array, features: int, strides: int, train: bool, dtype: Any) -> jax.Array:
  """Identity, or torchvision's `downsample` (conv1x1(stride)-bn) when the shape changes.

  Must be called inside a compact block's `__call__` (the submodules attach to that block).
  """
  if strides == 1 and x.shape[-1] == features:
    return x
  x = _conv(features, 1, strides, dtype, "downsample_conv")(x)
  return _bn(train, dtype, "downsample_bn")(x)


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
    if x.ndim != 4:
      raise ValueError(f"ResNet expects NHWC inputs (N, H, W, C); got shape {x.shape}.")
    block = _BLOCKS[self.block]
    x = x.astype(self.dtype)
    x = _conv(self.num_filters, 7, 2, self.dtype, "conv1")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1")(x))
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


def linen_model(module: nn.Module, variables: Mapping[str, PyTree], *,
                differentiate: Differentiate, input_spec: InputSpec, num_classes: int,
                name: str) -> Model:
  """Wraps an initialized zoo Linen module (`__call__(x, train)` -> logits) as a `Model`.

  A thin front to `adapters.from_linen` (inference mode, `train=False`), so every Linen zoo model
  has the adapters' layout and `flax_checkpoints.load_into` can re-bind its BatchNorm statistics.

  Args:
    module: the Linen module.
    variables: its variables, e.g. {"params": ..., "batch_stats": ...}.
    differentiate: "params": `Model.params = {"params": ...}` (conv kernels, BatchNorm
      scale/bias, head) and the other collections (BatchNorm running statistics) are closed over
      as `Model.state = {"batch_stats": ...}`. "all": `Model.params` holds every collection
      (running statistics included) and `state` is empty.
    input_spec: the model's input description.
    num_classes: number of logits.
    name: model name.

  Returns:
    A `Model` whose `apply(params, x)` maps (N, *input_spec.shape) to (N, num_classes) logits in
    inference mode; equal modules share one `apply` function (see `adapters.BoundApply`).

  Raises:
    ValueError: `differentiate` is neither "params" nor "all".
  """
  collections: tuple[str, ...]
  if differentiate == "params":
    collections = ("params",)
  elif differentiate == "all":
    collections = tuple(variables)
  else:
    raise ValueError(f"differentiate must be 'params' or 'all'; got {differentiate!r}.")
  return from_linen(module, variables, input_spec=input_spec, num_classes=num_classes,
                    differentiate=collections, apply_kwargs={"train": False}, name=name)


# XLA spends ~10x longer optimizing Flax's `init` (one threefry draw per parameter) than running
# it (tiny ResNet on 2 CPU cores: ~20 s compile at the default level, ~2.5 s at level 0, measured);
# `init` runs once, so it is compiled unoptimized. Values agree with the default to float32 ulps.
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}


def init_variables(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0,
                   dtype: Any = jnp.float32) -> PyTree:
  """`module.init(PRNGKey(seed), zeros(input_shape))`, jit-compiled with `INIT_COMPILER_OPTIONS`.

  Args:
    module: a Linen module whose `__call__(x)` accepts a batch of shape `input_shape`.
    input_shape: (N, H, W, C) of the dummy input.
    seed: PRNG seed.
    dtype: dtype of the dummy input.

  Returns:
    The module's variables `{collection: tree}`.
  """
  key = jax.random.PRNGKey(seed)
  x = jnp.zeros(input_shape, dtype)
  return jax.jit(module.init).lower(key, x).compile(INIT_COMPILER_OPTIONS)(key, x)


def _input_spec(image_size: int, dtype: Any) -> InputSpec:
  return InputSpec(shape=(image_size, image_size, 3), dtype=dtype, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD)


def build(arch: str, *, num_classes: int | None = None, image_size: int | None = None,
          seed: int = 0, dtype: Any = jnp.float32,
          differentiate: Differentiate = "params") -> Model:
  """A randomly initialized (torchvision init) ResNet variant as a `Model`.

  Args:
    arch: a key of `VARIANTS`.
    num_classes: number of logits (default: the variant's).
    image_size: input height = width (default: the variant's; any size >= 32 works for the
      ImageNet variants thanks to the global average pool).
    seed: PRNG seed of the initialization.
    dtype: parameter, input and computation dtype.
    differentiate: "params" or "all" (see `linen_model`).

  Returns:
    A `Model` with `apply(params, x)`: (N, image_size, image_size, 3) -> (N, num_classes).
  """
  module = make_module(arch, num_classes=num_classes, dtype=dtype)  # Checks `arch`.
  v = VARIANTS[arch]
  image_size = v.image_size if image_size is None else image_size
  variables = init_variables(module, (1, image_size, image_size, 3), seed, dtype)
  return linen_model(module, variables, differentiate=differentiate,
                     input_spec=_input_spec(image_size, dtype), num_classes=module.num_classes,
                     name=arch)


def abstract_variables(module: nn.Module, image_size: int = 224,
                       dtype: Any = jnp.float32) -> PyTree:
  """The module's variables as `jax.ShapeDtypeStruct`s (nothing is allocated or computed)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), dtype)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


def _factory(arch: str) -> Callable[..., Model]:
  v = VARIANTS[arch]

  def factory(*, num_classes: int = v.num_classes, image_size: int = v.image_size,
              seed: int = 0, dtype: Any = jnp.float32,
              differentiate: Differentiate = "params") -> Model:
    return build(arch, num_classes=num_classes, image_size=image_size, seed=seed, dtype=dtype,
                 differentiate=differentiate)

  factory.__name__ = arch
  factory.__qualname__ = arch
  factory.__doc__ = (
      f"Randomly initialized {arch} ({v.block} blocks, stages {v.stage_sizes}) as a `Model`.\n\n"
      f"See `ntk_zoo.models.resnet.build` for the arguments; defaults: num_classes="
      f"{v.num_classes}, image_size={v.image_size}.")
  return factory


for _arch in VARIANTS:
  register(_arch)(_factory(_arch))


# ----------------------------------------------------------------------------------------------
# torchvision / timm checkpoints.

_LAYER = re.compile(r"layer(\d+)_(\d+)")
_TORCH_SUBMODULE = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def torch_module_name(path: str) -> str:
  """Our module path -> torchvision module name.

  Example: "layer1_0/downsample_bn" -> "layer1.0.downsample.1".
  """
  parts = []
  for part in path.split("/"):
    m = _LAYER.fullmatch(part)
    parts.append(f"layer{m[1]}.{m[2]}" if m else _TORCH_SUBMODULE.get(part, part))
  return ".".join(parts)


def load_torchvision(path_or_flat: str | os.PathLike | Mapping[str, Any], *,
                     arch: str = "resnet50", num_classes: int | None = None,
                     image_size: int | None = None, dtype: Any = jnp.float32,
                     differentiate: Differentiate = "params") -> Model:
  """Loads a torchvision/timm ResNet state dict (`.safetensors`, never a pickle) into a `Model`.

  Expected names: conv1.weight, bn1.{weight,bias,running_mean,running_var},
  layer{1-4}.{j}.{conv1-3.weight, bn1-3.*, downsample.0.weight, downsample.1.*},
  fc.{weight,bias}; `*.num_batches_tracked` is ignored.

  Args:
    path_or_flat: a `.safetensors` file, or an in-memory `{torch_name: array}` dict.
    arch: a key of `VARIANTS` ("resnet18", ..., "wide_resnet50_2").
    num_classes: number of logits; default: read from `fc.weight` (else the variant's).
    image_size: input height = width for `input_spec` (default: the variant's).
    dtype: dtype of the loaded parameters and of the computation.
    differentiate: "params" or "all" (see `linen_model`).

  Returns:
    A `Model` in inference mode whose logits match the torch model's (NHWC inputs).

  Raises:
    CheckpointMismatchError: the file's keys/shapes differ from `arch`'s (listing missing and
      unexpected torch keys and shape conflicts).
    ValueError: a pickled checkpoint (`.pt`, `.pth`, `.bin`, ...) or an unknown `arch`.
  """
  flat, source = torch_convert.read_state_dict(path_or_flat)
  if num_classes is None and "fc.weight" in flat and flat["fc.weight"].ndim == 2:
    num_classes = int(flat["fc.weight"].shape[0])
  module = make_module(arch, num_classes=num_classes, dtype=dtype)
  v = VARIANTS[arch]
  image_size = v.image_size if image_size is None else image_size
  expected = checkpoints.flatten(abstract_variables(module, image_size, dtype))
  ours = torch_convert.convert_state_dict(flat, expected, torch_module_name, source=source,
                                          dtype=dtype)
  variables = jax.tree_util.tree_map(jnp.asarray, checkpoints.unflatten(ours))
  return linen_model(module, variables, differentiate=differentiate,
                     input_spec=_input_spec(image_size, dtype), num_classes=module.num_classes,
                     name=arch)
