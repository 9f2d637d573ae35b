"""Converting torch (torchvision/timm) state dicts into our Flax Linen variable trees.

Nothing here imports torch or unpickles: files are read with `checkpoints.read_safetensors`.
Layout changes (the weights themselves are never modified):

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

Two ways to use it:

* Plan-based (`convert_state_dict`, ResNet): driven by the *model's* flat variable shapes, not by
  the file. Every leaf our model needs is mapped to the torch name and torch shape it must have
  (the architecture supplies the function mapping our module path "layer1_0/conv1" to the torch
  module name "layer1.0.conv1"), the file is checked against that plan with
  `checkpoints.check_matches` (so errors list missing/unexpected torch keys and shape conflicts
  in the file's own vocabulary), and only then are arrays converted.
* Rule-based (`convert`, timm ViT/Mixer): a list of `Rule`s, each a regular expression over torch
  module names (`blocks.(\\d+).norm1`) and a function returning `{flax_key: array}` for the
  matched module's tensors (`dense`, `conv`, `layer_norm`, `tensor`, or the architecture's own,
  e.g. a fused qkv). Tensors no rule claims keep their torch name, so `check_matches` reports
  them as unexpected (`annotate_unexpected` names their origin).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ntk_zoo.models.convert import checkpoints

Arrays = dict[str, np.ndarray]

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
  """Torch conv weight (O, I, kH, kW) -> Flax/lax kernel (kH, kW, I, O) (other ranks: as is)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))) if np.ndim(w) == 4 else w


def conv_shape_to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax kernel shape (kH, kW, I, O) -> torch weight shape (O, I, kH, kW)."""
  kh, kw, i, o = shape
  return (o, i, kh, kw)


def linear_kernel_from_torch(w: np.ndarray) -> np.ndarray:
  """Torch Linear weight (out, in) -> Flax Dense kernel (in, out) (1-D: as is)."""
  return np.ascontiguousarray(np.swapaxes(w, -1, -2)) if np.ndim(w) >= 2 else w


def linear_shape_to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
  """Flax Dense kernel shape (in, out) -> torch Linear weight shape (out, in)."""
  i, o = shape
  return (o, i)


def _identity(a: np.ndarray) -> np.ndarray:
  return a


# ----------------------------------------------------------------------------------------------
# Reading.


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


# ----------------------------------------------------------------------------------------------
# Plan-based conversion (driven by the model's variables).


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


# ----------------------------------------------------------------------------------------------
# Rule-based conversion (driven by the file's module names).


@dataclasses.dataclass(frozen=True)
class Rule:
  """Converts one torch module's tensors.

  Attributes:
    pattern: regular expression matched (fully) against the torch module path, i.e. the tensor
      name without its last component (`blocks.3.attn.qkv` for `blocks.3.attn.qkv.weight`).
    convert: `convert(tensors, match) -> {flax_key: array}`, where `tensors` maps the last name
      component ("weight", "bias", ...) to the array and `match` is the regex match.
  """
  pattern: str
  convert: Callable[[Mapping[str, np.ndarray], re.Match], Arrays]


def _renamed(tensors: Mapping[str, np.ndarray], prefix: str,
             names: Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]) -> Arrays:
  out = {}
  for torch_name, w in tensors.items():
    if torch_name in names:
      flax_name, fn = names[torch_name]
      out[f"{prefix}/{flax_name}"] = fn(w)
    else:  # An unknown tensor of a known module: keep it visible as unexpected.
      out[f"{prefix}/{torch_name}"] = w
  return out


def dense(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.Linear` -> Flax `Dense` at `prefix` (may use `{1}`-style groups)."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("kernel", linear_kernel_from_torch),
                                "bias": ("bias", _identity)})


def conv(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.Conv2d` -> Flax `Conv` at `prefix`."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("kernel", conv_kernel_from_torch),
                                "bias": ("bias", _identity)})


def layer_norm(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.LayerNorm` -> Flax `LayerNorm` at `prefix`."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("scale", _identity), "bias": ("bias", _identity)})


def tensor(flax_key: str, fn: Callable[[np.ndarray], np.ndarray] = _identity
           ) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body for a bare `nn.Parameter` (pattern = its full name): one array to `flax_key`."""
  def body(t, m):
    (w,) = t.values()
    return {flax_key.format(*m.groups()): fn(w)}
  return body


def convert(state: Mapping[str, np.ndarray],
            rules: Sequence[Rule]) -> tuple[Arrays, dict[str, str]]:
  """Applies `rules` to a flat torch state dict.

  Bare parameters (`cls_token`) are matched by their full name; module tensors
  (`blocks.0.norm1.weight`) by their module path (`blocks.0.norm1`). The first matching rule wins.

  Args:
    state: `{torch_name: array}`.
    rules: the architecture's rules.

  Returns:
    `(flat, origin)`: `flat` maps Flax keys (or torch names no rule claims) to arrays; `origin`
    maps each key of `flat` to the torch module path or name it came from (for error messages).
  """
  compiled = [(re.compile(r.pattern), r.convert) for r in rules]
  # Group tensors by module path; bare parameters form their own group.
  groups: dict[str, dict[str, np.ndarray]] = {}
  for name, w in state.items():
    if any(rx.fullmatch(name) for rx, _ in compiled):
      groups.setdefault(name, {})[name] = w
    else:
      module, _, leaf = name.rpartition(".")
      groups.setdefault(module, {})[leaf] = w
  flat: Arrays = {}
  origin: dict[str, str] = {}
  for module, tensors in groups.items():
    for rx, body in compiled:
      m = rx.fullmatch(module)
      if m:
        for k, w in body(tensors, m).items():
          flat[k], origin[k] = w, module
        break
    else:  # No rule: keep the torch names.
      for leaf, w in tensors.items():
        k = f"{module}.{leaf}" if module else leaf
        flat[k], origin[k] = w, k
  return flat, origin


def annotate_unexpected(flat: Mapping[str, np.ndarray], origin: Mapping[str, str],
                        expected_keys: Iterable[str]) -> Arrays:
  """Appends `(from <torch name>)` to keys the model does not have, for readable errors.

  `expected_keys`: the model's parameter names (a collection, or a mapping keyed by them).
  """
  expected = set(expected_keys)
  return {k if (k in expected or origin.get(k, k) == k) else f"{k} (from {origin[k]})": v
          for k, v in flat.items()}
