"""Reading checkpoint files into flat `{name: np.ndarray}` dicts, and checking them against a model.

What every loader of this package shares (the format converters `torch_convert`, `npz_convert`
and the per-family loaders build on it):

* `read_safetensors(path)`: torch-origin `.safetensors` without torch (`safetensors.numpy`).
* `read_npz(path)`: numpy `.npz` without unpickling; bfloat16 stored as 2-byte void is decoded.
* `flatten(tree)` / `unflatten(flat)`: nested dicts <-> `{"a/b/c": array}`.
* `check_matches(expected, loaded)`: raises `CheckpointMismatchError` listing missing keys,
  unexpected keys and shape conflicts; `checked_tree` checks, then builds the parameter tree.

A file that cannot be read (a truncated download) raises `CheckpointFileError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ntk_zoo.ntk.typing import PyTree


class CheckpointMismatchError(ValueError):
  """A checkpoint's keys or shapes do not match the model it is loaded into."""


class CheckpointFileError(ValueError):
  """A checkpoint file cannot be read: truncated, corrupt, or of another format."""


def unreadable(path: str | os.PathLike, kind: str, error: Exception) -> CheckpointFileError:
  """The error for a file that is not a complete `kind` file (e.g. a truncated download)."""
  size = os.path.getsize(path) if os.path.isfile(path) else 0
  return CheckpointFileError(
      f"file {os.fspath(path)!r} ({size:,} bytes) is not a complete {kind} file (truncated "
      f"download?): reading it failed with {type(error).__name__}: {error}\n  Fix: download it "
      "again (compare its size or checksum with the source), or use the loader for its format.")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file into numpy arrays (no torch needed).

  Raises:
    CheckpointFileError: the file is truncated or not a safetensors file.
  """
  from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return dict(load_file(os.fspath(path)))
  except SafetensorError as e:
    raise unreadable(path, "safetensors", e) from e


def _decode_void(a: np.ndarray) -> np.ndarray:
  """big_vision stores bfloat16 arrays as a 2-byte void dtype; decode them to float32."""
  if a.dtype.kind == "V" and a.dtype.itemsize == 2:
    return a.view(ml_dtypes.bfloat16).astype(np.float32)
  return a


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads an `.npz` file (never unpickles); bfloat16-as-void arrays become float32.

  Raises:
    CheckpointFileError: the file is truncated or not an `.npz` archive.
  """
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with np.load(os.fspath(path), allow_pickle=False) as z:
      return {k: _decode_void(z[k]) for k in z.files}
  except (zipfile.BadZipFile, EOFError) as e:
    raise unreadable(path, "npz", e) from e


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """`{"a": {"b": x}}` -> `{"a/b": x}`."""
  out = {}

  def rec(prefix, node):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(f"{prefix}{sep}{k}" if prefix else str(k), v)
    else:
      out[prefix] = node

  rec("", tree)
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """`{"a/b": x}` -> `{"a": {"b": x}}`."""
  out: dict[str, Any] = {}
  for key, v in flat.items():
    node = out
    *parents, last = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


def check_matches(expected: Mapping[str, Any], loaded: Mapping[str, Any], *,
                  source: str = "checkpoint") -> None:
  """Checks that `loaded` has exactly the keys of `expected`, with the same shapes.

  Args:
    expected: flat `{key: array or ShapeDtypeStruct}` the model needs.
    loaded: flat `{key: array}` produced from the file (after renaming to our keys).
    source: the file name, used in the error message.

  Raises:
    CheckpointMismatchError: listing missing keys, unexpected keys and shape conflicts.
  """
  missing = sorted(set(expected) - set(loaded))
  unexpected = sorted(set(loaded) - set(expected))
  conflicts = sorted(
      f"{k}: model {tuple(np.shape(expected[k]))} vs file {tuple(np.shape(loaded[k]))}"
      for k in set(expected) & set(loaded)
      if tuple(np.shape(expected[k])) != tuple(np.shape(loaded[k])))
  if not (missing or unexpected or conflicts):
    return

  def block(title, items, limit=20):
    if not items:
      return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more

  raise CheckpointMismatchError(
      f"{source} does not match the model."
      + block("missing keys (the model needs them, the file lacks them)", missing)
      + block("unexpected keys (in the file, not in the model)", unexpected)
      + block("shape conflicts", conflicts)
      + "\n  Fix: build the model with the variant/num_classes the checkpoint was trained with, "
        "or pass the matching loader for this file's format.")


def tree_like(reference: PyTree, flat: Mapping[str, Any], sep: str = "/") -> PyTree:
  """Rebuilds a tree shaped like nested-dict `reference` from flat `{key: array}`."""
  ref_flat = flatten(reference, sep)
  check_matches(ref_flat, flat)
  return unflatten({k: np.asarray(flat[k]) for k in ref_flat}, sep)


def checked_tree(expected: Mapping[str, jax.ShapeDtypeStruct], loaded: Mapping[str, Any], *,
                 source: str, dtype: Any) -> dict[str, Any]:
  """`loaded`'s arrays at `expected`'s keys as a nested dict of `dtype` jax arrays.

  Raises:
    CheckpointMismatchError: `loaded` does not have exactly `expected`'s keys and shapes.
  """
  check_matches(expected, loaded, source=source)
  return unflatten({k: jnp.asarray(loaded[k], dtype) for k in expected})
