"""Flax msgpack and Orbax checkpoints of parameter trees, and loading them into a `Model`.

* `save(path, model, format="msgpack" | "orbax")` writes `{"params": model.params, "state":
  model.state}` (state left out when empty).
* `save_msgpack` / `save_orbax` write any tree; `read(path)` reads one back as nested dicts.
* `load_into(model, path)` returns a new `Model` with the file's params (and state, when the file
  has it), after checking keys and shapes against the model (`CheckpointMismatchError` lists
  missing keys, unexpected keys and shape conflicts).

`load_into` accepts these file layouts (`params`/`state` are the model's own trees; the name before
each colon is the one error messages use):

* `ntk_zoo {'params', 'state'}`: `{"params": params, "state": state}`, as `save(path, model)`
  writes it.
* `{'params': params, **state}`: Haiku `{"params": ..., "state": ...}` pairs for `from_haiku`
  models (whose state is `{"params": frozen, "state": ...}`), or `to_bytes(variables)` for a
  hand-built `Model` whose params are the inner "params" collection.
* `{**params, **state}`: `flax.serialization.to_bytes(variables)` for `from_linen` models and
  every Linen zoo model (ResNet, WRN, ViT, Mixer; params keyed by collection, e.g.
  `{"params": ...}` + `{"batch_stats": ...}`), or a bare params tree.

In all three, the state part may be absent (the model keeps its own state).

Msgpack files are single files (`flax.serialization.msgpack_serialize`); Orbax checkpoints are
directories (`orbax.checkpoint.StandardCheckpointer`); `format=None` tells them apart that way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models.adapters import BoundApply
from ntk_zoo.models.convert.checkpoints import CheckpointMismatchError, check_matches, unreadable
from ntk_zoo.models.model import Model
from ntk_zoo.ntk.typing import PyTree

__all__ = ["CheckpointMismatchError", "FORMATS", "detect_format", "load_into", "read",
           "read_msgpack", "read_orbax", "save", "save_msgpack", "save_orbax"]

FORMATS = ("msgpack", "orbax")


# ----------------------------------------------------------------------------------------------
# Trees <-> flat {"a/b/c": leaf}.


def _key_str(entry: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _flat_leaves(tree: PyTree) -> tuple[list[str], list[Any], Any]:
  """Keys ("a/b/0/c"), leaves and treedef of any pytree (dicts, lists, FrozenDicts...)."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  keys = ["/".join(_key_str(e) for e in path) for path, _ in with_path]
  return keys, [leaf for _, leaf in with_path], treedef


def _flat(tree: PyTree) -> dict[str, Any]:
  keys, leaves, _ = _flat_leaves(tree)
  return dict(zip(keys, leaves))


def _is_key_array(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_savable(tree: PyTree) -> PyTree:
  """Nested plain dicts with str keys and numpy leaves; PRNG keys stored as their uint32 data."""
  if isinstance(tree, Mapping):
    out = {str(k): _to_savable(v) for k, v in tree.items()}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
  if isinstance(tree, (list, tuple)):
    return {str(i): _to_savable(v) for i, v in enumerate(tree)}
  if _is_key_array(tree):
    tree = jax.random.key_data(tree)
  return np.asarray(tree)


def _prepare_path(path: str | os.PathLike, overwrite: bool) -> str:
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
  return path


# ----------------------------------------------------------------------------------------------
# Writing and reading raw trees.


def save_msgpack(path: str | os.PathLike, tree: PyTree, *, overwrite: bool = False) -> str:
  """Writes `tree` (nested dicts of arrays) as one Flax msgpack file; returns the path."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  path = _prepare_path(path, overwrite)
  data = serialization.msgpack_serialize(_to_savable(tree))
  with open(path, "wb") as f:
    f.write(data)
  return path


def save_orbax(path: str | os.PathLike, tree: PyTree, *, overwrite: bool = False) -> str:
  """Writes `tree` as an Orbax checkpoint directory (StandardCheckpointer); returns the path."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = _prepare_path(path, overwrite)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, _to_savable(tree), force=overwrite)
  return path


def detect_format(path: str | os.PathLike) -> str:
  """"orbax" for a directory, "msgpack" for a file.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return "orbax"
  if os.path.isfile(path):
    return "msgpack"
  raise FileNotFoundError(f"No checkpoint at {path!r}.")


def read_msgpack(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a Flax msgpack file into nested dicts of numpy arrays."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  with open(os.fspath(path), "rb") as f:
    data = f.read()
  try:
    return serialization.msgpack_restore(data)
  except ValueError as e:  # msgpack's "Unpack failed: incomplete input" and the like.
    raise unreadable(path, "Flax msgpack", e) from e


def read_orbax(path: str | os.PathLike) -> dict[str, Any]:
  """Reads an Orbax checkpoint directory into nested dicts of arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(os.fspath(path)))


def read(path: str | os.PathLike, format: str | None = None) -> dict[str, Any]:  # noqa: A002
  """Reads a msgpack file or Orbax directory (`format=None`: detected) into nested dicts."""
  format = format or detect_format(path)  # noqa: A001
  if format == "msgpack":
    return read_msgpack(path)
  if format == "orbax":
    return read_orbax(path)
  raise ValueError(f"Unknown checkpoint format {format!r}; known: {FORMATS} or None (detect).")


def save(path: str | os.PathLike, model: Model, *, format: str = "msgpack",  # noqa: A002
         overwrite: bool = False) -> str:
  """Writes `{"params": model.params, "state": model.state}` (no "state" when it is empty).

  Args:
    path: a file (msgpack) or a directory to create (orbax).
    model: the model whose trees are written.
    format: "msgpack" or "orbax".
    overwrite: replace an existing file/directory.

  Returns:
    The absolute path written.
  """
  tree = {"params": model.params}
  if jax.tree_util.tree_leaves(model.state):
    tree["state"] = model.state
  if format == "msgpack":
    return save_msgpack(path, tree, overwrite=overwrite)
  if format == "orbax":
    return save_orbax(path, tree, overwrite=overwrite)
  raise ValueError(f"Unknown checkpoint format {format!r}; known: {FORMATS}.")


# ----------------------------------------------------------------------------------------------
# Loading into a model.


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where the model's params / state keys sit in a file: key -> file key."""
  name: str
  params: dict[str, str]
  state: dict[str, str]

  def expected(self, with_state: bool) -> set[str]:
    return set(self.params.values()) | (set(self.state.values()) if with_state else set())


def _layouts(param_keys: list[str], state_keys: list[str]) -> list[_Layout]:
  def prefixed(prefix, keys):
    return {k: f"{prefix}{k}" for k in keys}
  return [
      _Layout("ntk_zoo {'params', 'state'}", prefixed("params/", param_keys),
              prefixed("state/", state_keys)),
      _Layout("{'params': params, **state}", prefixed("params/", param_keys),
              prefixed("", state_keys)),
      _Layout("{**params, **state}", prefixed("", param_keys), prefixed("", state_keys)),
  ]


def _match(layouts: list[_Layout], file_keys: set[str]) -> tuple[_Layout, bool]:
  """The layout the file follows, and whether the file holds the state part.

  The layout whose keys the file has exactly, or else the closest one (fewest missing plus
  unexpected keys), for `check_matches` to report the differences.
  """
  scored = []
  for i, layout in enumerate(layouts):
    for with_state in (True, False):
      expected = layout.expected(with_state)
      if file_keys == expected:
        return layout, with_state and bool(layout.state)
      scored.append((len(expected ^ file_keys), i, not with_state, layout, with_state))
  *_, layout, with_state = min(scored, key=lambda s: s[:3])
  return layout, with_state


def _convert(value: Any, like: Any) -> jax.Array:
  """`value` from a file as an array of `like`'s dtype (PRNG keys re-wrapped from their data)."""
  if _is_key_array(like):
    return jax.random.wrap_key_data(jnp.asarray(value), impl=jax.random.key_impl(like))
  return jnp.asarray(value, dtype=like.dtype)


def _rebuild(reference: PyTree, mapping: dict[str, str], file_flat: dict[str, Any]) -> PyTree:
  keys, leaves, treedef = _flat_leaves(reference)
  return jax.tree_util.tree_unflatten(
      treedef, [_convert(file_flat[mapping[k]], leaf) for k, leaf in zip(keys, leaves)])


def _shapes(tree: PyTree) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat {key: struct with the leaf's shape as stored in a file (PRNG keys: their data)}."""
  keys, leaves, _ = _flat_leaves(tree)
  return {k: jax.ShapeDtypeStruct(jnp.shape(jax.random.key_data(v) if _is_key_array(v) else v),
                                  jnp.float32) for k, v in zip(keys, leaves)}


def load_into(model: Model, path: str | os.PathLike,
              format: str | None = None) -> Model:  # noqa: A002
  """Loads a msgpack file / Orbax directory into a copy of `model`.

  Args:
    model: the model whose trees define the keys, shapes and dtypes expected.
    path: the checkpoint (see the module docstring for the accepted layouts).
    format: "msgpack", "orbax" or None (a directory is Orbax, a file msgpack).

  Returns:
    A new `Model` with the file's `params` (cast to the model's dtypes) and, when the file holds
    state, the file's `state` bound into `apply`; everything else unchanged.

  Raises:
    CheckpointMismatchError: keys missing from or unexpected in the file, or shape conflicts.
    ValueError: the file holds state but `model.apply` cannot be re-bound to new state (it is
      not a `BoundApply`, e.g. a hand-written closure).
    FileNotFoundError: nothing at `path`.
  """
  source = os.fspath(path)
  file_flat = _flat(read(path, format))
  param_shapes, state_shapes = _shapes(model.params), _shapes(model.state)
  layout, with_state = _match(_layouts(list(param_shapes), list(state_shapes)), set(file_flat))
  expected = {layout.params[k]: s for k, s in param_shapes.items()}
  if with_state:
    expected.update({layout.state[k]: s for k, s in state_shapes.items()})
  check_matches(expected, file_flat, source=f"{source} (layout {layout.name})")
  params = _rebuild(model.params, layout.params, file_flat)
  if not with_state:
    return dataclasses.replace(model, params=params)
  if not isinstance(model.apply, BoundApply):
    raise ValueError(
        f"{source} holds state ({len(state_shapes)} arrays, e.g. BatchNorm statistics) but "
        f"model {model.name!r} closes over its own state in a plain function, so it cannot be "
        "re-bound. Build the model with ntk_zoo.models.adapters (from_linen/from_nnx/from_haiku) "
        "or save the params alone.")
  state = _rebuild(model.state, layout.state, file_flat)
  return dataclasses.replace(model, params=params, state=state, apply=model.apply.rebind(state))

