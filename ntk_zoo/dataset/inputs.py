"""Examples a dataset-scale kernel reads tile by tile: arrays, pytrees of arrays, or sources.

`Examples` gives random access to batches of a dataset that need not fit in memory: a numpy (or
jax) array or a pytree of arrays with the examples on axis 0, or any sequence of examples with
`len()` and `[i]` (a `tfds.data_source`, a list of dicts or arrays), whose items are stacked.
An optional `transform` runs on every batch (e.g. a zoo model's `input_spec.preprocess`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ntk_zoo.ntk.typing import PyTree

__all__ = ["Examples", "as_examples"]

# Raw input bytes hashed to recognize a store's inputs on resume (beyond: a strided sample).
MAX_HASH_BYTES = 2 ** 30


class Examples:
  """A dataset with random access to batches of consecutive examples.

  Attributes:
    n: number of examples.
  """

  def __init__(self, data: Any, transform: Callable[[PyTree], PyTree] | None = None):
    self._transform = transform
    self._source = None
    if _is_sequence_source(data):
      self._source = data
      self.n = len(data)
    else:
      leaves = jax.tree_util.tree_leaves(data)
      if not leaves:
        raise ValueError("The inputs hold no arrays: pass an array (examples on axis 0), a "
                         "pytree of arrays, or a sequence of examples (e.g. a tfds.data_source).")
      sizes = {int(np.shape(l)[0]) if np.ndim(l) else -1 for l in leaves}
      if -1 in sizes or len(sizes) != 1:
        shapes = [np.shape(l) for l in leaves]
        raise ValueError(f"Every input leaf needs the examples on axis 0, all of one size; got "
                         f"shapes {shapes}.")
      self._data = data
      self.n = sizes.pop()
    if self.n == 0:
      raise ValueError("The inputs hold no examples.")

  def __len__(self) -> int:
    return self.n

  def batch(self, start: int, stop: int, pad_to: int | None = None) -> PyTree:
    """Examples [start, stop), transformed; padded with copies of the last one to `pad_to`."""
    if not 0 <= start < stop <= self.n:
      raise IndexError(f"batch [{start}, {stop}) is outside the {self.n} examples.")
    idx = np.arange(start, stop)
    if pad_to is not None and pad_to > len(idx):
      idx = np.concatenate([idx, np.full(pad_to - len(idx), stop - 1)])
    if self._source is not None:
      items = [self._source[int(i)] for i in idx]
      batch = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)
    else:
      pad = len(idx) - (stop - start)
      batch = jax.tree_util.tree_map(
          lambda l: np.concatenate([np.asarray(l[start:stop])]
                                   + [np.asarray(l[stop - 1:stop])] * pad), self._data)
    return self._transform(batch) if self._transform is not None else batch

  def fingerprint(self, first: int) -> str:
    """A hash of the number of examples, the first `first` examples as transformed, and (for
    arrays) all the raw data up to `MAX_HASH_BYTES` (a strided sample of the examples beyond)."""
    h = hashlib.sha256(f"n={self.n}".encode())
    _hash_tree(h, self.batch(0, min(first, self.n)))
    if self._source is None:
      nbytes = sum(np.asarray(l[:1]).nbytes for l in jax.tree_util.tree_leaves(self._data))
      stride = max(1, int(np.ceil(self.n * nbytes / MAX_HASH_BYTES)))
      _hash_tree(h, jax.tree_util.tree_map(lambda l: np.asarray(l[::stride]), self._data))
    return h.hexdigest()[:16]


def as_examples(data: Any, transform: Callable[[PyTree], PyTree] | None = None) -> Examples:
  return data if isinstance(data, Examples) else Examples(data, transform)


def _is_sequence_source(data: Any) -> bool:
  """A sequence of examples (a data source), as opposed to an array or a pytree of arrays."""
  if isinstance(data, (np.ndarray, jax.Array, dict, tuple)):
    return False
  if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
    return True  # A list of examples.
  return hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "shape")


def _hash_tree(h, tree: PyTree) -> None:
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  h.update(str(treedef).encode())
  for leaf in leaves:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def tree_fingerprint(tree: PyTree) -> str:
  h = hashlib.sha256()
  _hash_tree(h, tree)
  return h.hexdigest()[:16]
