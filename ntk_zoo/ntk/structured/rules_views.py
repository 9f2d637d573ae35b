"""View rules: primitives that only re-index a parameter are folded into its view.

Transpose/squeeze/convert permute or drop letters; broadcast adds local letters (tiling);
reshape keeps letters when it only adds/removes unit axes, or starts a new θ coordinate system
when it regroups θ axes; static slices of the raw parameter narrow its window (scanned,
stacked layers).
"""

from __future__ import annotations

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.rules import defview
from ntk_zoo.ntk.structured.structure import LocalLetter, ThetaLetter, View

P = C.prims


def base_view(leaf: int, shape: tuple[int, ...], window=None) -> View:
  """The parameter leaf itself (or a window of it), in its own coordinates."""
  shp = shape if window is None else tuple(e - s for s, e in window)
  system = ("leaf", leaf, window)
  return View(leaf, window, tuple(ThetaLetter(system, j, n) for j, n in enumerate(shp)), shp)


def _is_raw(view: View) -> bool:
  system = ("leaf", view.leaf, view.window)
  return all(isinstance(d, ThetaLetter) and d.system == system and d.axis == j
             for j, d in enumerate(view.dims))


def _out_shape(eqn) -> tuple[int, ...]:
  return tuple(eqn.outvars[0].aval.shape)


def _same(view: View, eqn) -> View:
  return View(view.leaf, view.window, view.dims, _out_shape(eqn))


def _transpose(view: View, eqn) -> View:
  perm = eqn.params["permutation"]
  return View(view.leaf, view.window, tuple(view.dims[p] for p in perm), _out_shape(eqn))


def _squeeze(view: View, eqn) -> View:
  drop = {d % len(view.shape) for d in eqn.params["dimensions"]}
  dims = tuple(d for j, d in enumerate(view.dims) if j not in drop)
  return View(view.leaf, view.window, dims, _out_shape(eqn))


def _broadcast_in_dim(view: View, eqn) -> View:
  shape = _out_shape(eqn)
  where = dict(zip(eqn.params["broadcast_dimensions"], range(len(view.shape))))
  dims = []
  for d, n in enumerate(shape):
    i = where.get(d)
    dims.append(view.dims[i] if i is not None and view.shape[i] == n else LocalLetter(n))
  return View(view.leaf, view.window, tuple(dims), shape)


def _reshape(view: View, eqn) -> View | None:
  if eqn.params.get("dimensions") is not None:
    return None
  shape = _out_shape(eqn)
  old = [(d, n) for d, n in zip(view.dims, view.shape) if n != 1]
  new = [n for n in shape if n != 1]
  if [n for _, n in old] == new:  # Only unit axes added/removed: keep the letters.
    it = iter(d for d, _ in old)
    return View(view.leaf, view.window,
                tuple(next(it) if n != 1 else LocalLetter(1) for n in shape), shape)
  if not all(isinstance(d, ThetaLetter) for d, _ in old):
    return None  # Would mix broadcast axes with θ axes.
  system = ("reshape", tuple(d for d, _ in old), shape)
  return View(view.leaf, view.window,
              tuple(ThetaLetter(system, j, n) for j, n in enumerate(shape)), shape)


def _slice(view: View, eqn) -> View | None:
  strides = eqn.params.get("strides")
  if not _is_raw(view) or (strides is not None and any(s != 1 for s in strides)):
    return None
  starts = view.window or tuple((0, n) for n in view.shape)
  window = tuple((s0 + a, s0 + b) for (s0, _), a, b in
                 zip(starts, eqn.params["start_indices"], eqn.params["limit_indices"]))
  return base_view(view.leaf, (), window)


defview(P.convert_element_type_p, _same)
defview(P.copy_p, _same)
defview(P.reduce_precision_p, _same)
defview(P.transpose_p, _transpose)
defview(P.squeeze_p, _squeeze)
defview(P.broadcast_in_dim_p, _broadcast_in_dim)
defview(P.reshape_p, _reshape)
defview(P.slice_p, _slice)
