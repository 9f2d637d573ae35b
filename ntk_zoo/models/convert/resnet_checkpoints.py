"""torchvision / timm ResNet checkpoints, loaded into `ntk_zoo.models.resnet` (re-exported there).

* `load_torchvision`: a torchvision/timm ResNet state dict (`.safetensors`, never a pickle, or an
  in-memory dict) as a `Model` whose logits match the torch model's.
* `torch_module_name`: our module path -> torchvision module name (the plan of
  `torch_convert.convert_state_dict`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.models import common
from ntk_zoo.models.common import Differentiate
from ntk_zoo.models.convert import checkpoints, torch_convert
from ntk_zoo.models.model import Model

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
    arch: a key of `resnet.VARIANTS` ("resnet18", ..., "wide_resnet50_2").
    num_classes: number of logits; default: read from `fc.weight` (else the variant's).
    image_size: input height = width for `input_spec` (default: the variant's).
    dtype: dtype of the loaded parameters and of the computation.
    differentiate: "params" or "all" (see `common.linen_model`).

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
  module = resnet.make_module(arch, num_classes=num_classes, dtype=dtype)
  image_size = resnet.VARIANTS[arch].image_size if image_size is None else image_size
  expected = checkpoints.flatten(common.abstract_variables(module, image_size, dtype))
  ours = torch_convert.convert_state_dict(flat, expected, torch_module_name, source=source,
                                          dtype=dtype)
  variables = jax.tree_util.tree_map(jnp.asarray, checkpoints.unflatten(ours))
  spec = common.image_spec(image_size, dtype, common.IMAGENET_MEAN, common.IMAGENET_STD)
  return common.linen_model(module, variables, differentiate=differentiate, input_spec=spec,
                            num_classes=module.num_classes, name=arch)


# Imported last: `resnet` re-exports this module's loaders, so either can be imported first.
from ntk_zoo.models import resnet  # noqa: E402
