"""`dataset_ntk`: the N1 × N2 kernel of a dataset, tile by tile, into an on-disk store.

The grid of example pairs is cut into tiles (t1 × t2 examples) sized from the memory budget;
every tile is one jitted kernel call, sharded over the local devices along x1's examples
(`jax.shard_map` over a `Mesh`), written to a `KernelStore` and then marked done. Rerunning the
same call continues where a killed job stopped: marked tiles are never recomputed. With
`x2 = None` the kernel is symmetric and each off-diagonal tile is computed once (its transpose
is written too). Under multi-controller JAX (`jax.distributed.initialize`), each process takes
every `process_count`-th tile, all writing to one store.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, cast

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ntk_zoo.dataset import inputs as inputs_lib
from ntk_zoo.dataset import store as store_lib
from ntk_zoo.dataset.store import KernelStore, StoreMeta
from ntk_zoo.ntk import cost, memory
from ntk_zoo.ntk.options import Role
from ntk_zoo.ntk.typing import PyTree

log = logging.getLogger(__name__)

__all__ = ["DatasetKernel", "dataset_ntk", "plan_tile"]

AXIS = "examples"
# Tile sides tried when the tile is planned: the first, and the largest.
START_TILE = 32
MAX_TILE = 256
# Per-entry cost must drop by this fraction for a larger tile to be preferred.
MIN_GAIN = 0.1
# Examples (as transformed) hashed into a store's fingerprint; arrays are hashed whole.
FINGERPRINT_EXAMPLES = 64


@dataclasses.dataclass
class DatasetKernel:
  """What one `dataset_ntk` call did.

  Attributes:
    path: the store.
    shape: the kernel's shape (what `ntk_fn` would return for the whole dataset).
    tile: examples per tile (x1, x2).
    computed: tiles this call (this process) computed.
    reused: tiles found done and skipped.
    remaining: tiles neither done nor this process's (other processes' share, if any).
    seconds: wall time of the tile loop (compiles included).
    decision: the `ntk_fn` decision for a tile (method and plan), when the kernel has one
      and this call computed a tile.
  """
  path: os.PathLike
  shape: tuple[int, ...]
  tile: tuple[int, int]
  computed: int
  reused: int
  remaining: int
  seconds: float
  decision: Any = None

  @property
  def complete(self) -> bool:
    return self.remaining == 0

  def load(self):
    from ntk_zoo.dataset.store import load_kernel  # pylint: disable=g-import-not-at-top
    return load_kernel(self.path)


def dataset_ntk(kernel_fn: Callable, xs1: Any, xs2: Any = None, params: PyTree = None, *,
                store: str | os.PathLike, tile: int | tuple[int, int] | None = None,
                transform: Callable[[PyTree], PyTree] | None = None, mesh: Mesh | None = None,
                overwrite: bool = False,
                progress: bool = True, on_tile: Callable[[int, int], None] | None = None
                ) -> DatasetKernel:
  """Computes the kernel of a whole dataset into an on-disk store, resumably.

  Args:
    kernel_fn: `kernel_fn(x1, x2, params)` for batches, e.g. `ntk_fn(model.apply,
      trace_axes=(), vmap_axes=0)`. Its output is one array whose first two axes are x1's and
      x2's examples. An `ntk_fn` kernel must be per-example (`vmap_axes` set, inputs batched
      on axis 0), since tiles split the batch.
    xs1: the x1 examples: an array (examples on axis 0), a pytree of such arrays, or a
      sequence of examples (e.g. a `tfds.data_source`; its items are stacked per tile).
    xs2: the x2 examples, or None for the symmetric kernel Θ(xs1, xs1).
    params: the parameters passed to `kernel_fn`.
    store: directory of the store (created; an existing store of the same computation is
      resumed).
    tile: examples per tile, one int or (t1, t2); default: planned from the memory budget
      (`plan_tile`). A symmetric kernel uses square tiles.
    transform: applied to every batch of examples before `kernel_fn` (e.g.
      `model.input_spec.preprocess`).
    mesh: a 1-D `Mesh` whose devices share each tile along x1's examples; default: all local
      devices (none when there is one).
    overwrite: discard an existing store at `store` instead of resuming it.
    progress: show a tqdm bar with the ETA.
    on_tile: called with (i, j) after each tile this call computes is stored.

  Returns:
    A `DatasetKernel`; `.load()` opens the stored kernel (`load_kernel`).

  Raises:
    StoreMismatchError: `store` holds a kernel of other inputs, params, tiling or settings.
  """
  if params is None:
    raise TypeError("dataset_ntk(kernel_fn, xs1, xs2, params, store=...): `params` is required.")
  _check_kernel_fn(kernel_fn)
  ex1 = inputs_lib.as_examples(xs1, transform)
  ex2 = None if xs2 is None else inputs_lib.as_examples(xs2, transform)
  symmetric = ex2 is None
  mesh = default_mesh() if mesh is None else mesh
  n_dev = 1 if mesh is None else mesh.size
  if tile is None and not overwrite and (pathlib.Path(store) / "meta.json").exists():
    tile = store_lib.read_meta(store).tile  # Resuming: the store's tiling (checked below).
  if tile is None:
    tile = plan_tile(kernel_fn, ex1, ex2, params, n_dev)
  t1, t2 = (tile, tile) if isinstance(tile, int) else tuple(tile)
  if symmetric and t1 != t2:
    raise ValueError(f"A symmetric kernel (xs2=None) needs square tiles, got {(t1, t2)}.")
  if t1 % n_dev:
    raise ValueError(f"tile {t1} (x1 examples) is not a multiple of the mesh's {n_dev} devices "
                     f"that share it; use a multiple of {n_dev}.")
  ex2_ = ex2 if ex2 is not None else ex1
  n1, n2 = len(ex1), len(ex2_)
  t1, t2 = min(t1, _round_up(n1, n_dev)), min(t2, n2)
  if symmetric:
    t2 = t1

  calls = _TileCalls(kernel_fn, mesh, params)
  sample = jax.eval_shape(calls.pair, ex1.batch(0, 1, t1), ex2_.batch(0, 1, t2))
  if not isinstance(sample, jax.ShapeDtypeStruct):
    raise TypeError("dataset_ntk needs a kernel with one array output; kernel_fn returns "
                    f"{jax.tree_util.tree_structure(sample)}. Wrap f to return one array.")
  if sample.ndim < 2 or sample.shape[:2] != (t1, t2):
    raise ValueError(f"kernel_fn's output on tiles of {t1} and {t2} examples has shape "
                     f"{sample.shape}; dataset_ntk needs (N1, N2, ...) outputs (no diagonal or "
                     "traced batch axis).")
  meta = StoreMeta(
      shape=(n1, n2, *sample.shape[2:]), dtype=np.dtype(sample.dtype).name, tile=(t1, t2),
      symmetric=symmetric, transpose=_transpose(kernel_fn, sample.ndim),
      fingerprint={"x1": ex1.fingerprint(FINGERPRINT_EXAMPLES),
                   "x2": "x1" if symmetric else ex2_.fingerprint(FINGERPRINT_EXAMPLES),
                   "params": inputs_lib.tree_fingerprint(params),
                   "kernel": _kernel_signature(kernel_fn)})
  kstore = KernelStore(store, meta, overwrite=overwrite and jax.process_index() == 0)

  tiles = meta.tiles()
  mine = [t for k, t in enumerate(tiles) if k % jax.process_count() == jax.process_index()]
  done = kstore.done_tiles()
  todo = [t for t in mine if t not in done]
  reused = sum(t in done for t in mine)
  bar = _bar(len(mine), reused, progress, meta)
  start, decision = time.perf_counter(), None
  try:
    for i, j in todo:
      if kstore.is_done(i, j):  # Another process (a restarted one) finished it meanwhile.
        reused += 1
        continue
      r, c = meta.bounds(i, j)
      a = ex1.batch(r.start, r.stop, t1)
      if symmetric and i == j:
        block = calls.diagonal(a)
      else:
        block = calls.pair(a, ex2_.batch(c.start, c.stop, t2))
      block = np.asarray(block)[: r.stop - r.start, : c.stop - c.start]
      kstore.write(i, j, block)
      decision = decision or getattr(kernel_fn, "last_decision", None)
      if on_tile is not None:
        on_tile(i, j)
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  seconds = time.perf_counter() - start
  remaining = len(tiles) - len(kstore.done_tiles())
  computed = len(mine) - reused
  log.info("dataset_ntk: %d tiles computed, %d reused, %d remaining, %.1f s", computed, reused,
           remaining, seconds)
  return DatasetKernel(kstore.path, meta.shape, (t1, t2), computed, reused, remaining, seconds,
                       decision)


class _TileCalls:
  """Jitted kernel calls on one tile: sharded over the mesh's devices along x1's examples."""

  def __init__(self, kernel_fn: Callable, mesh: Mesh | None, params: PyTree):
    self.params = params
    if mesh is None or mesh.size == 1:
      self._pair = jax.jit(lambda a, b, p: kernel_fn(a, b, p))
      self._diag = jax.jit(lambda a, p: kernel_fn(a, None, p))
      return
    axis = mesh.axis_names[0]
    sharded = jax.shard_map(lambda a, b, p: kernel_fn(a, b, p), mesh=mesh,
                            in_specs=(PartitionSpec(axis), PartitionSpec(), PartitionSpec()),
                            out_specs=PartitionSpec(axis),
                            # The engines re-bind primitives of traced jaxprs, which the
                            # varying-axes checker rejects (mixing replicated and per-device
                            # values is what a per-shard kernel does).
                            check_vma=False)
    self._pair = jax.jit(sharded)
    self._diag = jax.jit(lambda a, p: sharded(a, a, p))

  def pair(self, a: PyTree, b: PyTree):
    return self._pair(a, b, self.params)

  def diagonal(self, a: PyTree):
    return self._diag(a, self.params)


def default_mesh() -> Mesh | None:
  """A 1-D mesh over this process's devices, or None when it has one."""
  devices = jax.local_devices()
  return None if len(devices) == 1 else Mesh(np.array(devices), (AXIS,))


def plan_tile(kernel_fn: Callable, ex1: inputs_lib.Examples, ex2: inputs_lib.Examples | None,
              params: PyTree, n_devices: int = 1) -> int:
  """The tile side with the lowest estimated cost per kernel entry that fits the kernel's budget
  (`ntk_fn(memory_budget=...)`, per device).

  Each candidate is planned by `kernel_fn` on abstract inputs (nothing runs). A tile fits if
  its plan does not block the output directions (which recomputes) and its kernel stays under
  a quarter of the budget. Starting from `START_TILE` examples, the side is halved until a
  tile fits, or doubled (up to `MAX_TILE` and the number of examples) while the estimated
  cost per entry drops by at least `MIN_GAIN`. Kernels that make no plan (not from `ntk_fn`) get 16 examples per device.
  """
  n = min(len(ex1), len(ex1 if ex2 is None else ex2))
  if not hasattr(kernel_fn, "decisions"):
    return min(16 * n_devices, _round_up(n, n_devices))
  a1, b1 = ex1.batch(0, 1), (ex1 if ex2 is None else ex2).batch(0, 1)

  def per_entry(side: int) -> float:
    """Estimated cost per entry of a side × side tile; inf if it blocks or does not fit."""
    try:
      k = jax.eval_shape(lambda a, b: kernel_fn(a, b, params),
                         _repeat(a1, max(1, side // n_devices)), _repeat(b1, side))
    except memory.BudgetError:
      return math.inf
    plan = cast(Any, kernel_fn).last_decision.plan  # Set by the call just traced.
    blocked = any(len(b) == 4 and (b[2] > 1 or b[3]) for b in plan.blocks)
    if blocked or n_devices * k.size * k.dtype.itemsize > plan.budget / 4:
      return math.inf
    return cost.Estimate(plan.flops, plan.bytes_written).cost / (side * side)

  side = min(n, START_TILE)
  best_cost = per_entry(side)
  while not math.isfinite(best_cost) and side > 1:  # Too big: halve until one fits.
    side //= 2
    best_cost = per_entry(side)
  while math.isfinite(best_cost) and side < min(n, MAX_TILE):  # Grow while it pays.
    bigger = min(2 * side, n, MAX_TILE)
    c = per_entry(bigger)
    if not c <= (1 - MIN_GAIN) * best_cost:
      break
    side, best_cost = bigger, c
  return min(_round_up(side, n_devices), _round_up(n, n_devices))


def _repeat(batch: PyTree, k: int) -> PyTree:
  return jax.tree_util.tree_map(
      lambda l: jax.ShapeDtypeStruct((k, *np.shape(l)[1:]), np.asarray(l).dtype), batch)


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


def _check_kernel_fn(kernel_fn: Callable) -> None:
  opts = getattr(kernel_fn, "options", None)
  if opts is None:
    return
  if opts.vmap_axes is None:
    raise ValueError(
        "dataset_ntk splits the examples into tiles, which is exact only for a per-example f; "
        "this kernel was made with vmap_axes=None. Build it with ntk_fn(f, ..., vmap_axes=0) "
        "(and BatchNorm in inference mode), or compute the whole batch with one kernel call.")
  in_axes = jax.tree_util.tree_leaves(opts.vmap_axes.inputs)
  if any(a not in (0, None) for a in in_axes):
    raise ValueError(f"dataset_ntk batches examples on axis 0; the kernel's vmap_axes inputs "
                     f"are {opts.vmap_axes.inputs!r}. Move the batch axis of the inputs to 0.")
  if 0 in opts.diagonal_axes:
    raise ValueError("dataset_ntk computes N1 × N2 grids of example pairs; this kernel has "
                     "diagonal_axes on the batch axis (0). Drop diagonal_axes=(0,).")


def _transpose(kernel_fn: Callable, ndim: int) -> tuple[int, ...]:
  """The permutation of a kernel block's axes that gives Θ(x2, x1) from Θ(x1, x2).

  The kernel's axes come in (x1, x2) pairs, except diagonal axes (one axis); for `ntk_fn`
  kernels the roles of the output axes say which, otherwise every axis is taken as paired.
  """
  opts = getattr(kernel_fn, "options", None)
  layout = None
  if opts is not None:
    for out_ndim in range(1, ndim + len(opts.trace_axes) + len(opts.diagonal_axes) + 1):
      if any(not -out_ndim <= a < out_ndim for a in (*opts.trace_axes, *opts.diagonal_axes)):
        continue
      roles = opts.roles(out_ndim)
      kept = [r for r in roles if r is not Role.TRACE]
      if sum(1 if r is Role.DIAG else 2 for r in kept) == ndim:
        layout = kept
        break
  if layout is None:
    if ndim % 2:
      raise ValueError(f"Cannot tell the (x1, x2) axis pairs of a {ndim}-d kernel block.")
    layout = [Role.PAIR] * (ndim // 2)
  perm, k = [], 0
  for r in layout:
    if r is Role.DIAG:
      perm.append(k)
      k += 1
    else:
      perm += [k + 1, k]
      k += 2
  return tuple(perm)


def _kernel_signature(kernel_fn: Callable) -> str:
  opts = getattr(kernel_fn, "options", None)
  impl = getattr(kernel_fn, "implementation", None)
  return repr((getattr(impl, "value", impl), opts))


def _bar(total: int, initial: int, progress: bool, meta: StoreMeta):
  if not progress or total == initial:
    return None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, unit="tile",
              desc=f"kernel {'×'.join(map(str, meta.shape[:2]))} in tiles of "
                   f"{meta.tile[0]}×{meta.tile[1]}")
