"""MLP-Mixer checkpoints, loaded into `ntk_zoo.models.mixer` modules (re-exported there).

Loaders (no torch import, nothing is unpickled):
* `load_npz`: vit_jax / big_vision files, optionally prefixed `params/` or `opt/target/`,
  blocks possibly scanned, bfloat16 stored as void.
* `load_timm`: timm `MlpMixer` `.safetensors` state dicts (`mixer_b16_224.goog_in21k_ft_in1k`).

The token-mixing MLP's widths depend on the number of patches, so a checkpoint only loads at the
resolution it was trained at.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from ntk_zoo.models import common
from ntk_zoo.models.common import ImageSize
from ntk_zoo.models.convert import checkpoints, npz_convert
from ntk_zoo.models.convert import torch_convert as tc
from ntk_zoo.models.model import Model


def _finish_load(flat: dict[str, np.ndarray], *, config: mixer.MixerConfig,
                 num_classes: int | None, image_size: ImageSize, gelu_approximate: bool,
                 dtype: Any, source: str, name: str,
                 origin: dict[str, str] | None = None) -> Model:
  """Checks `flat` (our keys) against the model's parameters and builds the `Model`."""
  if num_classes is None:
    num_classes = int(flat["head/bias"].shape[0]) if "head/bias" in flat else 1000
  expected = mixer.param_shapes(config, num_classes=num_classes, image_size=image_size)
  if origin is None:
    flat = npz_convert.match_names(flat, expected)
  else:
    flat = tc.annotate_unexpected(flat, origin, expected)
  params = checkpoints.checked_tree(expected, flat, source=source, dtype=dtype)
  module = mixer.make_module(config, num_classes=num_classes, gelu_approximate=gelu_approximate,
                             dtype=dtype)
  return common.patch_model(module, params, image_size, name)


def load_npz(path: str | os.PathLike, *, variant: str | mixer.MixerConfig,
             num_classes: int | None = None, image_size: ImageSize = 224,
             gelu_approximate: bool = True, dtype: Any = jnp.float32) -> Model:
  """Loads a vit_jax or big_vision MLP-Mixer `.npz` checkpoint.

  Args:
    path: the `.npz` file (keys optionally prefixed `params/` or `opt/target/`; other entries,
      e.g. optimizer state, are ignored; bfloat16-as-void decoded).
    variant: e.g. "B/16" (see `mixer.decode_variant`).
    num_classes: logits C; default: the size of the file's head.
    image_size: input side; must give the number of patches the checkpoint was trained with.
    gelu_approximate: tanh-approximate GELU (True for JAX-trained weights).
    dtype: parameter and computation dtype.

  Returns:
    `Model` with the file's weights; apply(params, x): (N, H, W, 3) -> (N, C).

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  config = mixer.decode_variant(variant)
  flat = npz_convert.read_google_npz(path, anchor="stem/kernel", scanned=[("", "MixerBlock")])
  return _finish_load(flat, config=config, num_classes=num_classes, image_size=image_size,
                      gelu_approximate=gelu_approximate, dtype=dtype, source=os.fspath(path),
                      name=common.default_name("mixer", variant))


# timm `MlpMixer` module names -> ours ("{0}": the block index).
_TIMM_RULES = [
    tc.Rule(r"stem\.proj", tc.conv("stem")),
    tc.Rule(r"blocks\.(\d+)\.norm1", tc.layer_norm("MixerBlock_{0}/LayerNorm_0")),
    tc.Rule(r"blocks\.(\d+)\.mlp_tokens\.fc1", tc.dense("MixerBlock_{0}/token_mixing/Dense_0")),
    tc.Rule(r"blocks\.(\d+)\.mlp_tokens\.fc2", tc.dense("MixerBlock_{0}/token_mixing/Dense_1")),
    tc.Rule(r"blocks\.(\d+)\.norm2", tc.layer_norm("MixerBlock_{0}/LayerNorm_1")),
    tc.Rule(r"blocks\.(\d+)\.mlp_channels\.fc1",
            tc.dense("MixerBlock_{0}/channel_mixing/Dense_0")),
    tc.Rule(r"blocks\.(\d+)\.mlp_channels\.fc2",
            tc.dense("MixerBlock_{0}/channel_mixing/Dense_1")),
    tc.Rule("norm", tc.layer_norm("pre_head_layer_norm")),
    tc.Rule("head", tc.dense("head")),
]


def load_timm(path: str | os.PathLike, *, variant: str | mixer.MixerConfig,
              num_classes: int | None = None, image_size: ImageSize = 224,
              gelu_approximate: bool = False, dtype: Any = jnp.float32) -> Model:
  """Loads a timm `MlpMixer` `.safetensors` state dict (read with `safetensors.numpy`, no torch).

  The arguments, result and errors are those of `load_npz`, except `path`: the `.safetensors`
  file (`stem.proj`, `blocks.{i}.{norm1, mlp_tokens.fc1/fc2, norm2, mlp_channels.fc1/fc2}`,
  `norm`, `head`), and `gelu_approximate`: False (timm uses exact GELU).
  """
  config = mixer.decode_variant(variant)
  flat, origin = tc.convert(checkpoints.read_safetensors(path), _TIMM_RULES)
  return _finish_load(flat, config=config, num_classes=num_classes, image_size=image_size,
                      gelu_approximate=gelu_approximate, dtype=dtype, source=os.fspath(path),
                      name=common.default_name("mixer", variant), origin=origin)


# Imported last: `mixer` re-exports this module's loaders, so either can be imported first.
from ntk_zoo.models import mixer  # noqa: E402
