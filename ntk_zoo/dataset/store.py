"""On-disk kernel stores: a chunked tensorstore (zarr) array, one chunk per tile, and done marks.

A store is a directory:

    meta.json     shape, dtype, tile, grid, symmetry, and a fingerprint of what made it
    kernel/       the kernel, a zarr array chunked as (tile1, tile2, *rest): one chunk per tile
    done/         one empty file `i_j` per finished tile, created only after its data is written

A tile is trusted only when its mark exists, so a job killed mid-write recomputes that tile.
Processes (hosts) may write different tiles of one store at once: every tile is its own chunk
and its own mark. `load_kernel(path)` opens a finished store as a numpy-compatible array.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["KernelStore", "StoreMismatchError", "StoredKernel", "IncompleteKernelError",
           "load_kernel"]

FORMAT = "ntk_zoo.kernel_store/1"


class StoreMismatchError(ValueError):
  """The store was made for other inputs, params, tiling or kernel settings."""


class IncompleteKernelError(RuntimeError):
  """The store has tiles that are not done yet."""


@dataclasses.dataclass(frozen=True)
class StoreMeta:
  """What a store holds: the kernel's shape and dtype, its tiling, and how it was made."""
  shape: tuple[int, ...]
  dtype: str
  tile: tuple[int, int]
  symmetric: bool
  fingerprint: dict[str, str]
  transpose: tuple[int, ...]  # Axes permutation from Θ(x1, x2) to Θ(x2, x1) (symmetric stores).

  @property
  def grid(self) -> tuple[int, int]:
    return tuple(-(-n // t) for n, t in zip(self.shape[:2], self.tile))  # type: ignore

  def tiles(self) -> list[tuple[int, int]]:
    """Every tile (i, j) to compute; for a symmetric kernel only j >= i."""
    g1, g2 = self.grid
    return [(i, j) for i in range(g1) for j in range(g2) if not self.symmetric or j >= i]

  def bounds(self, i: int, j: int) -> tuple[slice, slice]:
    (t1, t2), (n1, n2) = self.tile, self.shape[:2]
    return slice(i * t1, min(n1, (i + 1) * t1)), slice(j * t2, min(n2, (j + 1) * t2))

  def to_json(self) -> dict[str, Any]:
    return {"format": FORMAT, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> StoreMeta:
    if d.get("format") != FORMAT:
      raise StoreMismatchError(f"not an ntk_zoo kernel store (format {d.get('format')!r}).")
    return cls(tuple(d["shape"]), d["dtype"], tuple(d["tile"]), bool(d["symmetric"]),
               dict(d["fingerprint"]), tuple(d["transpose"]))


def _spec(path: pathlib.Path, meta: StoreMeta | None = None) -> dict[str, Any]:
  spec: dict[str, Any] = {"driver": "zarr",
                          "kvstore": {"driver": "file", "path": str(path / "kernel")}}
  if meta is not None:
    chunks = [*meta.tile, *meta.shape[2:]]
    spec["metadata"] = {"shape": list(meta.shape), "chunks": chunks,
                        "dtype": np.dtype(meta.dtype).str, "compressor": None,
                        "fill_value": "NaN"}  # Tiles not written yet read as NaN.
  return spec


class KernelStore:
  """A kernel store opened for writing tiles (created if absent)."""

  def __init__(self, path: str | os.PathLike, meta: StoreMeta, overwrite: bool = False):
    import tensorstore as ts  # pylint: disable=g-import-not-at-top
    self.path = pathlib.Path(path)
    self.meta = meta
    meta_file = self.path / "meta.json"
    if overwrite and meta_file.exists():
      _remove_store(self.path)
    if self.path.exists() and not meta_file.exists() and any(self.path.iterdir()):
      raise StoreMismatchError(
          f"{self.path} exists and is not an ntk_zoo kernel store (no meta.json). Pass a new "
          "or empty directory.")
    (self.path / "done").mkdir(parents=True, exist_ok=True)
    _create_meta(meta_file, meta)
    self._array = ts.open(_spec(self.path, meta), create=True, open=True).result()

  def is_done(self, i: int, j: int) -> bool:
    return (self.path / "done" / f"{i}_{j}").exists()

  def done_tiles(self) -> set[tuple[int, int]]:
    return _done(self.path)

  def write(self, i: int, j: int, block: np.ndarray) -> None:
    """Writes tile (i, j) (and its mirror (j, i) for a symmetric store), then marks it done."""
    rows, cols = self.meta.bounds(i, j)
    futures = [self._array[rows, cols].write(block)]
    if self.meta.symmetric and i != j:
      futures.append(self._array[cols, rows].write(np.transpose(block, self.meta.transpose)))
    for fut in futures:
      fut.result()
    mark = self.path / "done" / f"{i}_{j}"
    mark.touch()


def _create_meta(meta_file: pathlib.Path, meta: StoreMeta) -> None:
  """Writes meta.json once (atomically, safe when several processes race); or checks it."""
  if not meta_file.exists():
    tmp = meta_file.with_name(f".meta.{os.getpid()}.json")
    tmp.write_text(json.dumps(meta.to_json(), indent=1))
    try:
      os.link(tmp, meta_file)  # Fails if another process created it first.
    except FileExistsError:
      pass
    finally:
      tmp.unlink()
  existing = StoreMeta.from_json(json.loads(meta_file.read_text()))
  if existing != meta:
    diff = [f"{k}: stored {a!r}, now {b!r}" for k in meta.__dataclass_fields__ if k != "fingerprint"
            for a, b in [(getattr(existing, k), getattr(meta, k))] if a != b]
    diff += [f"{k}: stored {existing.fingerprint.get(k)!r}, now {v!r}"
             for k, v in meta.fingerprint.items() if existing.fingerprint.get(k) != v]
    raise StoreMismatchError(
        f"The store {meta_file.parent} was made by another computation (differing "
        + "; ".join(diff) + ")"
        + ". Rerun with the same inputs, params and settings to resume, or pass "
        "overwrite=True (--overwrite) or a new store path.")


def _remove_store(path: pathlib.Path) -> None:
  import shutil  # pylint: disable=g-import-not-at-top
  for name in ("kernel", "done", "meta.json"):
    target = path / name
    if target.is_dir():
      shutil.rmtree(target)
    elif target.exists():
      target.unlink()


def _done(path: pathlib.Path) -> set[tuple[int, int]]:
  out = set()
  for mark in (path / "done").iterdir() if (path / "done").is_dir() else ():
    a, _, b = mark.name.partition("_")
    if a.isdigit() and b.isdigit():
      out.add((int(a), int(b)))
  return out


class StoredKernel:
  """A kernel on disk, read as numpy: `k[i0:i1]`, `np.asarray(k)`, `k.shape`, `k.dtype`.

  Indexing reads only the chunks it touches, so rows of a kernel larger than memory can be
  read one block at a time.
  """

  def __init__(self, path: pathlib.Path, meta: StoreMeta, array: Any):
    self.path, self.meta, self._array = path, meta, array

  @property
  def shape(self) -> tuple[int, ...]:
    return self.meta.shape

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.meta.dtype)

  @property
  def ndim(self) -> int:
    return len(self.meta.shape)

  def __len__(self) -> int:
    return self.meta.shape[0]

  def missing_tiles(self) -> list[tuple[int, int]]:
    done = _done(self.path)
    return [t for t in self.meta.tiles() if t not in done]

  def __getitem__(self, key) -> np.ndarray:
    return np.asarray(self._array[key].read().result())

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    out = self[...]
    return out if dtype is None else out.astype(dtype)

  def __iter__(self) -> Iterator[np.ndarray]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return (f"StoredKernel({str(self.path)!r}, shape={self.shape}, dtype={self.dtype.name}, "
            f"tile={self.meta.tile})")


def read_meta(path: str | os.PathLike) -> StoreMeta:
  meta_file = pathlib.Path(path) / "meta.json"
  if not meta_file.exists():
    raise FileNotFoundError(
        f"{path} is not an ntk_zoo kernel store (no meta.json): make one with "
        "ntk_zoo.dataset_ntk(..., store=PATH) or `ntk-zoo kernel --out PATH`.")
  return StoreMeta.from_json(json.loads(meta_file.read_text()))


def load_kernel(path: str | os.PathLike, allow_incomplete: bool = False) -> StoredKernel:
  """Opens a kernel store as a numpy-compatible array of the shape `ntk_fn` would return.

  Args:
    path: the store directory (`dataset_ntk(store=...)`, `ntk-zoo kernel --out`).
    allow_incomplete: open a store whose job has not finished; its missing tiles read as NaN.

  Raises:
    IncompleteKernelError: tiles are missing (names how many and how to finish them).
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  meta = read_meta(path)
  array = ts.open(_spec(path), open=True, read=True).result()
  kernel = StoredKernel(path, meta, array)
  missing = kernel.missing_tiles()
  if missing and not allow_incomplete:
    raise IncompleteKernelError(
        f"{path}: {len(missing)} of {len(meta.tiles())} tiles are not done (first {missing[0]}). "
        "Rerun the same dataset_ntk call / `ntk-zoo kernel` command to finish them, or pass "
        "allow_incomplete=True.")
  return kernel
