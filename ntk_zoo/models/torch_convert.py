"""Converting torch (torchvision/timm) state dicts into our Flax Linen variable trees.

Shared by the architecture loaders (`resnet.load_torchvision`, ...). The conversion is driven by
the *model's* flat variable shapes, not by the file: every leaf our model needs is mapped to the
torch name and torch shape it must have, the file is checked against that plan with
`checkpoints.check_matches` (so errors list missing/unexpected torch keys and shape conflicts in
the file's own vocabulary), and only then are arrays converted.

Leaf conventions (ours <- torch):

  ============================  ==========================  ==========================
  ours (flat "collection/...")  torch                        conversion
  ============================  ==========================  ==========================
  params/<m>/kernel  (4-D)       <m>.weight (O, I, kH, kW)   OIHW -> HWIO
  params/<m>/kernel  (2-D)       <m>.weight (out, in)        transpose -> (in, out)
  params/<m>/bias                <m>.bias                    as is
  params/<m>/scale               <m>.weight  (norm layers)   as is
  batch_stats/<m>/mean           <m>.running_mean            as is
  batch_stats/<m>/var            <m>.running_var             as is
  ============================  ==========================  ==========================

`<m>` is the module path; each architecture supplies the function mapping our module path
("layer1_0/conv1") to the torch module name ("layer1.0.conv1").

Nothing here unpickles: files are read with `checkpoints.read_safetensors`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from ntk_zoo.models import checkpoints

# Torch buffers that carry no information for inference and are dropped before matching.
IGNORED_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)

_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")

PICKLE_REFUSED = (
    "{path} looks like a pickled torch checkpoint. ntk_zoo never unpickles files (unpickling runs "
    "arbitrary code). Convert it once, in an environment you trust, with\n"
    "  import torch, safetensors.torch\n"
    "  sd = torch.load({path!r}, map_location='cpu', weights_only=True)\n"
    "  sd = {{k: v.contiguous() for k, v in sd.items()}}\n"
    "  safetensors.torch.save_file(sd, 'model.safetensors')\n"
    "and pass the `.safetensors` file instead.")


def conv_kernel_from_torch(w: np.ndarray) -> np.ndarray:
  """Torch conv weight (O, I, kH, kW) -> Flax/lax kernel (kH, kW, I, O)."""
  return np.transpose(w, (2, 3, 1, 0))


def conv_shape_to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax kernel shape (kH, kW, I, O) -> torch weight shape (O, I, kH, kW)."""
  kh, kw, i, o = shape
  return (o, i, kh, kw)


def linear_kernel_from_torch(w: np.ndarray) -> np.ndarray:
  """Torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.transpose(w, (1, 0))


def linear_shape_to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax Dense kernel shape (in, out) -> torch Linear weight shape (out, in)."""
  i, o = shape
  return (o, i)


def _identity(a: np.ndarray) -> np.ndarray:
  return a


@dataclasses.dataclass(frozen=True)
class LeafPlan:
  """Where one of our leaves comes from in a torch state dict.

  Attributes:
    ours: our flat key, e.g. "params/layer1_0/conv1/kernel".
    torch_name: the torch state-dict key, e.g. "layer1.0.conv1.weight".
    torch_shape: the shape that key must have in the file.
    convert: maps the torch array to our layout.
  """
  ours: str
  torch_name: str
  torch_shape: tuple[int, ...]
  convert: Callable[[np.ndarray], np.ndarray]


def plan_leaf(our_key: str, shape: tuple[int, ...],
              module_to_torch: Callable[[str], str]) -> LeafPlan:
  """The torch name, shape and conversion of one of our flat leaves (see the module table).

  Args:
    our_key: flat key "collection/module/path/leaf".
    shape: our shape of that leaf.
    module_to_torch: maps our module path ("layer1_0/conv1") to the torch module name.

  Raises:
    ValueError: the leaf kind has no torch counterpart in this table.
  """
  collection, *module, leaf = our_key.split("/")
  if not module:
    raise ValueError(f"Variable {our_key!r} has no module path; cannot name its torch key.")
  prefix = module_to_torch("/".join(module))
  shape = tuple(shape)
  if collection == "params" and leaf == "kernel" and len(shape) == 4:
    return LeafPlan(our_key, f"{prefix}.weight", conv_shape_to_torch(shape),
                    conv_kernel_from_torch)
  if collection == "params" and leaf == "kernel" and len(shape) == 2:
    return LeafPlan(our_key, f"{prefix}.weight", linear_shape_to_torch(shape),
                    linear_kernel_from_torch)
  if collection == "params" and leaf == "scale":
    return LeafPlan(our_key, f"{prefix}.weight", shape, _identity)
  if collection == "params" and leaf == "bias":
    return LeafPlan(our_key, f"{prefix}.bias", shape, _identity)
  if collection == "batch_stats" and leaf == "mean":
    return LeafPlan(our_key, f"{prefix}.running_mean", shape, _identity)
  if collection == "batch_stats" and leaf == "var":
    return LeafPlan(our_key, f"{prefix}.running_var", shape, _identity)
  raise ValueError(
      f"No torch counterpart for variable {our_key!r} of shape {shape}: torch_convert knows "
      "params/*/kernel (2-D or 4-D), params/*/scale, params/*/bias, batch_stats/*/mean and "
      "batch_stats/*/var.")


def plan(our_shapes: Mapping[str, Any],
         module_to_torch: Callable[[str], str]) -> dict[str, LeafPlan]:
  """Plans the conversion of a whole model.

  Args:
    our_shapes: flat `{our_key: array or ShapeDtypeStruct}` (e.g. `checkpoints.flatten` of
      `jax.eval_shape(module.init, ...)`).
    module_to_torch: maps our module path to the torch module name.

  Returns:
    `{torch_name: LeafPlan}`.

  Raises:
    ValueError: two of our leaves map to the same torch name (a bug in `module_to_torch`).
  """
  out: dict[str, LeafPlan] = {}
  for key, value in our_shapes.items():
    leaf = plan_leaf(key, tuple(np.shape(value)), module_to_torch)
    if leaf.torch_name in out:
      raise ValueError(f"Variables {out[leaf.torch_name].ours!r} and {key!r} both map to torch "
                       f"key {leaf.torch_name!r}.")
    out[leaf.torch_name] = leaf
  return out


def read_state_dict(path_or_flat: str | os.PathLike | Mapping[str, Any]) -> tuple[
    dict[str, np.ndarray], str]:
  """Reads a torch state dict from a `.safetensors` file, or takes an in-memory flat dict.

  Args:
    path_or_flat: a `.safetensors` path, or `{torch_name: array}` (numpy arrays, or anything
      `np.asarray` accepts, e.g. CPU torch tensors).

  Returns:
    (`{torch_name: np.ndarray}`, a description of the source for error messages).

  Raises:
    ValueError: the path names a pickled checkpoint (refused, with the conversion recipe).
    FileNotFoundError: the path does not exist.
  """
  if isinstance(path_or_flat, Mapping):
    return {k: np.asarray(v) for k, v in path_or_flat.items()}, "state dict"
  path = os.fspath(path_or_flat)
  if path.endswith(_PICKLE_SUFFIXES):
    raise ValueError(PICKLE_REFUSED.format(path=path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint file {path!r} does not exist.")
  return checkpoints.read_safetensors(path), path


def drop_ignored(flat: Mapping[str, np.ndarray],
                 suffixes: Iterable[str] = IGNORED_SUFFIXES) -> dict[str, np.ndarray]:
  """Removes torch buffers such as `*.num_batches_tracked`."""
  suffixes = tuple(suffixes)
  return {k: v for k, v in flat.items() if k.split(".")[-1] not in suffixes}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], our_shapes: Mapping[str, Any],
                       module_to_torch: Callable[[str], str], *, source: str = "checkpoint",
                       dtype: Any = np.float32,
                       ignore_suffixes: Iterable[str] = IGNORED_SUFFIXES) -> dict[str, np.ndarray]:
  """Converts a torch state dict into our flat variables, after checking it matches exactly.

  Args:
    state_dict: `{torch_name: array}` as stored by torch.
    our_shapes: flat `{our_key: array or ShapeDtypeStruct}` the model needs.
    module_to_torch: maps our module path to the torch module name.
    source: the file name, for error messages.
    dtype: dtype of the returned arrays.
    ignore_suffixes: torch buffer names dropped before matching.

  Returns:
    flat `{our_key: np.ndarray}` with our layouts (`checkpoints.unflatten` gives the tree).

  Raises:
    CheckpointMismatchError: missing torch keys, unexpected torch keys or shape conflicts.
  """
  leaves = plan(our_shapes, module_to_torch)
  loaded = drop_ignored(state_dict, ignore_suffixes)
  expected = {name: jax.ShapeDtypeStruct(leaf.torch_shape, np.float32)
              for name, leaf in leaves.items()}
  checkpoints.check_matches(expected, loaded, source=source)
  return {leaf.ours: np.asarray(leaf.convert(np.asarray(loaded[name])), dtype=dtype)
          for name, leaf in leaves.items()}

