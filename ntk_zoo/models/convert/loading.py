"""One entry point from a zoo name and a checkpoint file to a `Model`: the loader by format.

    >>> model = ntk_zoo.models.load("resnet50", "resnet50.safetensors")     # torchvision
    >>> model = ntk_zoo.models.load("vit_b16", "ViT-B_16.npz", image_size=224)
    >>> model = ntk_zoo.models.load("wrn28_10", "ckpt.msgpack")              # Flax msgpack
    >>> model = ntk_zoo.models.load("resnet18", num_classes=10)              # random init

`.safetensors` (torchvision/timm) for ResNets, ViT and Mixer; `.npz` (vit_jax / big_vision)
for ViT and Mixer; a Flax msgpack file or an Orbax directory for any zoo model. Pickles
(`.pt`, `.pth`, ...) are refused: they are never unpickled.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable
from typing import TypedDict

from ntk_zoo.models.model import Model

__all__ = ["CheckpointFormatError", "PICKLE_SUFFIXES", "family", "load"]

# Suffixes of pickled (torch) checkpoints, which are never unpickled.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

_PATCH_MODEL = re.compile(r"(vit|mixer)_(ti|s|b|l)(\d+)|(vit|mixer)_tiny")
_WIDTHS = {"ti": "Ti", "s": "S", "b": "B", "l": "L"}


class CheckpointFormatError(ValueError):
  """No loader for this file's format and this architecture (or a pickle)."""


class _Sizes(TypedDict, total=False):
  """The size arguments `load` passes on (those given)."""
  num_classes: int
  image_size: int


def family(name: str) -> tuple[str, str | None]:
  """("resnet" | "vit" | "mixer" | "other", the vit_jax variant such as "B/16" for vit/mixer)."""
  from ntk_zoo.models import resnet  # pylint: disable=g-import-not-at-top
  if name in resnet.VARIANTS:
    return "resnet", None
  m = _PATCH_MODEL.fullmatch(name)
  if m is None:
    return "other", None
  if m[4]:
    return m[4], "tiny/4"
  return m[1], f"{_WIDTHS[m[2]]}/{m[3]}"


def load(name: str, checkpoint: str | os.PathLike | None = None, *,
         num_classes: int | None = None, image_size: int | None = None, **kwargs) -> Model:
  """The zoo model `name`, randomly initialized or with `checkpoint`'s weights.

  Args:
    name: a zoo name (`ntk_zoo.models.list()`).
    checkpoint: weights file (format by suffix, see the module docstring), or None.
    num_classes: logits; with a torch/timm/npz checkpoint, default the file's head.
    image_size: input side; with a checkpoint, default the architecture's own.
    **kwargs: passed to `ntk_zoo.models.get` (random init, msgpack/Orbax): seed, dtype, ...

  Raises:
    FileNotFoundError: `checkpoint` does not exist.
    CheckpointFormatError: a pickle, or a format this architecture has no loader for.
    ntk_zoo.models.CheckpointMismatchError: the file's keys/shapes do not fit.
  """
  from ntk_zoo.models import mixer, registry, resnet, vit  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models.convert import flax_checkpoints  # pylint: disable=g-import-not-at-top
  kw: _Sizes = {}
  if num_classes:
    kw["num_classes"] = num_classes
  if image_size:
    kw["image_size"] = image_size
  if checkpoint is None:
    return registry.get(name, **kw, **kwargs)
  path = pathlib.Path(checkpoint)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path}: no such file or directory")
  suffix = path.suffix.lower()
  if suffix in PICKLE_SUFFIXES:
    raise CheckpointFormatError(
        f"checkpoint {path} is a pickle, which ntk_zoo never unpickles: save it as "
        ".safetensors (safetensors.torch.save_file)")
  kind, variant = family(name)
  loaders: dict[tuple[str, str], Callable[[], Model]] = {
      ("resnet", ".safetensors"): lambda: resnet.load_torchvision(path, arch=name, **kw),
  }
  if variant is not None:  # vit and mixer.
    loaders.update({
        ("vit", ".safetensors"): lambda: vit.load_timm(path, variant=variant, **kw),
        ("vit", ".npz"): lambda: vit.load_npz(path, variant=variant, **kw),
        ("mixer", ".safetensors"): lambda: mixer.load_timm(path, variant=variant, **kw),
        ("mixer", ".npz"): lambda: mixer.load_npz(path, variant=variant, **kw),
    })
  loader = loaders.get((kind, suffix))
  if loader is not None:
    return loader()
  if suffix in (".safetensors", ".npz"):
    raise CheckpointFormatError(
        f"no {suffix} loader for {name}: use a Flax msgpack file or Orbax directory "
        "(ntk_zoo.models.flax_checkpoints.save)")
  return flax_checkpoints.load_into(registry.get(name, **kw, **kwargs), path)
