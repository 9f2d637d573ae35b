"""ViT checkpoints, loaded into `ntk_zoo.models.vit` modules (re-exported there).

Loaders (no torch import, nothing is unpickled):
* `load_npz`: vit_jax files (pre-Linen numbering, optional `opt/target/` prefix) and big_vision
  files (Linen numbering, `params/` prefix, blocks scanned along depth, bfloat16 stored as void,
  position embedding at the top level without a class-token row), with the position embedding
  resampled to a new image size as vit_jax's `load_pretrained` does.
* `load_timm`: timm `.safetensors` state dicts (`vit_base_patch16_224.augreg2_in21k_ft_in1k`, ...).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models import common
from ntk_zoo.models.common import ImageSize
from ntk_zoo.models.convert import checkpoints, npz_convert
from ntk_zoo.models.convert import torch_convert as tc
from ntk_zoo.models.model import Model


def _is_square(n: int) -> bool:
  return n >= 0 and int(round(np.sqrt(n))) ** 2 == n


def _grid(config: vit.ViTConfig, image_size: ImageSize) -> tuple[int, int]:
  h, w, _ = common.image_shape(image_size)
  return (h // config.patch_size, w // config.patch_size)


def _finish_load(flat: dict[str, np.ndarray], expected: dict[str, jax.ShapeDtypeStruct],
                 module: vit.VisionTransformer, image_size: ImageSize, source: str,
                 name: str) -> Model:
  """Checks `flat` (our keys) against the `expected` shapes and builds the `Model`."""
  params = checkpoints.checked_tree(expected, flat, source=source, dtype=module.dtype)
  return common.patch_model(module, params, image_size, name)


def _resample(flat: dict[str, np.ndarray], config: vit.ViTConfig, image_size, classifier: str,
              method: str) -> None:
  """Resamples `flat[vit.POSEMB_KEY]` (in place) to the model's grid of patches, if it differs."""
  pe = flat.get(vit.POSEMB_KEY)
  if pe is None or np.ndim(pe) != 3:
    return
  prefix = 1 if classifier == "token" else 0
  gh, gw = _grid(config, image_size)
  if pe.shape[1] != prefix + gh * gw and _is_square(pe.shape[1] - prefix):
    flat[vit.POSEMB_KEY] = npz_convert.resample_posemb(pe, (gh, gw), num_prefix_tokens=prefix,
                                                       method=method)


def load_npz(path: str | os.PathLike, *, variant: str | vit.ViTConfig,
             num_classes: int | None = None, image_size: ImageSize = 224,
             gelu_approximate: bool = True, dtype: Any = jnp.float32,
             posemb_method: str = "vit_jax") -> Model:
  """Loads a vit_jax or big_vision ViT `.npz` checkpoint.

  Handles: pre-Linen (vit_jax) and Linen (big_vision) module numbering; keys prefixed `params/`
  or `opt/target/` (other entries, e.g. optimizer state, are ignored); blocks scanned along a
  leading depth axis (`Transformer/encoderblock/...`); bfloat16 stored as 2-byte void; the position
  embedding at `Transformer/posembed_input`, `Transformer/pos_embedding` or the top level, with or
  without a class-token row (big_vision adds it before prepending the class token, which equals
  a zero class-token row here); a position embedding trained at another resolution (resampled to
  `image_size`). The class token's presence selects `classifier` ("token" or "gap"), a
  `pre_logits` layer sets `representation_size`.

  Args:
    path: the `.npz` file.
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C; default: the size of the file's head.
    image_size: input side; the position embedding is resampled if trained at another size.
    gelu_approximate: tanh-approximate GELU (True for JAX-trained weights).
    dtype: parameter and computation dtype.
    posemb_method: see `npz_convert.resample_posemb` ("vit_jax": as vit_jax/big_vision do).

  Returns:
    `Model` with the file's weights; apply(params, x): (N, H, W, 3) -> (N, C).

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  config = vit.decode_variant(variant)
  flat = npz_convert.read_google_npz(path, anchor="embedding/kernel",
                                     scanned=[("Transformer", "encoderblock")])
  classifier = "token" if "cls" in flat else "gap"
  for old in ("pos_embedding", "Transformer/pos_embedding"):
    if old in flat and vit.POSEMB_KEY not in flat:
      flat[vit.POSEMB_KEY] = flat.pop(old)
  pe = flat.get(vit.POSEMB_KEY)
  if classifier == "token" and pe is not None and np.ndim(pe) == 3 and _is_square(pe.shape[1]):
    # big_vision layout: no position embedding on the class token == a zero row here.
    flat[vit.POSEMB_KEY] = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
  _resample(flat, config, image_size, classifier, posemb_method)
  representation_size = (int(flat["pre_logits/kernel"].shape[-1])
                          if "pre_logits/kernel" in flat else None)
  if num_classes is None:
    num_classes = int(flat["head/bias"].shape[0]) if "head/bias" in flat else 1000
  module = vit.make_module(config, num_classes=num_classes, classifier=classifier,
                           representation_size=representation_size,
                           gelu_approximate=gelu_approximate, dtype=dtype)
  expected = vit.param_shapes(config, num_classes=num_classes, image_size=image_size,
                              classifier=classifier, representation_size=representation_size)
  flat = npz_convert.match_names(flat, expected)
  return _finish_load(flat, expected, module, image_size, os.fspath(path),
                      common.default_name("vit", variant))


def _split_heads(kernel: np.ndarray, num_heads: int, axis: int) -> np.ndarray:
  """Splits `axis` of size H*d_h into (H, d_h); unchanged if not divisible (reported later)."""
  n = kernel.shape[axis]
  if n % num_heads:
    return kernel
  shape = kernel.shape[:axis] + (num_heads, n // num_heads) + kernel.shape[axis + 1:]
  return kernel.reshape(shape)


def _timm_rules(num_heads: int) -> list[tc.Rule]:
  """timm `VisionTransformer` state-dict names -> our keys."""
  blk = "Transformer/encoderblock_{0}"
  mha = blk + "/MultiHeadDotProductAttention_1"

  def qkv(t, m):
    prefix = mha.format(*m.groups())
    out = {}
    w, b = t.get("weight"), t.get("bias")
    for j, part in enumerate(("query", "key", "value")):
      if w is not None and w.shape[0] % 3 == 0:
        wj = np.split(w, 3, axis=0)[j]  # (D, D) (out, in)
        kernel = tc.linear_kernel_from_torch(wj)
        out[f"{prefix}/{part}/kernel"] = _split_heads(kernel, num_heads, 1)
      if b is not None and b.shape[0] % 3 == 0:
        out[f"{prefix}/{part}/bias"] = _split_heads(np.split(b, 3)[j], num_heads, 0)
    for leaf, v in t.items():
      if leaf not in ("weight", "bias") or v.shape[0] % 3:
        out[f"{prefix}/qkv.{leaf}"] = v
    return out

  def proj(t, m):
    prefix = mha.format(*m.groups()) + "/out"
    out = {}
    for leaf, v in t.items():
      if leaf == "weight":
        out[f"{prefix}/kernel"] = _split_heads(tc.linear_kernel_from_torch(v), num_heads, 0)
      elif leaf == "bias":
        out[f"{prefix}/bias"] = v
      else:
        out[f"{prefix}/{leaf}"] = v
    return out

  r = tc.Rule
  return [
      r("cls_token", tc.tensor("cls")),
      r("pos_embed", tc.tensor(vit.POSEMB_KEY)),
      r(r"patch_embed\.proj", tc.conv("embedding")),
      r(r"blocks\.(\d+)\.norm1", tc.layer_norm(blk + "/LayerNorm_0")),
      r(r"blocks\.(\d+)\.attn\.qkv", qkv),
      r(r"blocks\.(\d+)\.attn\.proj", proj),
      r(r"blocks\.(\d+)\.norm2", tc.layer_norm(blk + "/LayerNorm_2")),
      r(r"blocks\.(\d+)\.mlp\.fc1", tc.dense(blk + "/MlpBlock_3/Dense_0")),
      r(r"blocks\.(\d+)\.mlp\.fc2", tc.dense(blk + "/MlpBlock_3/Dense_1")),
      r("norm", tc.layer_norm("Transformer/encoder_norm")),
      r("head", tc.dense("head")),
  ]


def load_timm(path: str | os.PathLike, *, variant: str | vit.ViTConfig,
              num_classes: int | None = None, image_size: ImageSize = 224,
              gelu_approximate: bool = False, dtype: Any = jnp.float32,
              posemb_method: str = "bicubic") -> Model:
  """Loads a timm ViT `.safetensors` state dict (read with `safetensors.numpy`, no torch).

  Expects timm's `VisionTransformer` names: `cls_token`, `pos_embed` (1, 1 + h*w, D),
  `patch_embed.proj.{weight,bias}`, `blocks.{i}.{norm1, attn.qkv (fused 3D x D), attn.proj, norm2,
  mlp.fc1, mlp.fc2}`, `norm`, `head`. Variants with layer scale, register tokens, `fc_norm` or
  no class token are a different architecture: their tensors are reported as unexpected.

  Args:
    path: the `.safetensors` file.
    variant: e.g. "B/16" (see `decode_variant`).
    num_classes: logits C; default: the size of the file's head.
    image_size: input side; `pos_embed` is resampled (`posemb_method`) if trained at another.
    gelu_approximate: False (timm uses exact GELU).
    dtype: parameter and computation dtype.
    posemb_method: see `npz_convert.resample_posemb` (timm itself uses bicubic).

  Returns:
    `Model` with the file's weights; apply(params, x): (N, H, W, 3) -> (N, C).

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  config = vit.decode_variant(variant)
  state = checkpoints.read_safetensors(path)
  flat, origin = tc.convert(state, _timm_rules(config.num_heads))
  classifier = "token" if "cls" in flat else "gap"
  _resample(flat, config, image_size, classifier, posemb_method)
  if num_classes is None:
    num_classes = int(flat["head/bias"].shape[0]) if "head/bias" in flat else 1000
  module = vit.make_module(config, num_classes=num_classes, classifier=classifier,
                           gelu_approximate=gelu_approximate, dtype=dtype)
  expected = vit.param_shapes(config, num_classes=num_classes, image_size=image_size,
                              classifier=classifier)
  flat = tc.annotate_unexpected(flat, origin, expected)
  return _finish_load(flat, expected, module, image_size, os.fspath(path),
                      common.default_name("vit", variant))


# Imported last: `vit` re-exports this module's loaders, so either can be imported first.
from ntk_zoo.models import vit  # noqa: E402
