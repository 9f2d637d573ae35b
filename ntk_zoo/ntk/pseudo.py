"""The pseudo-NTK: the NTK of the sum of the logits, an N1 × N2 kernel O² times smaller.

Θ_p(x1, x2) = ∂g(x1)/∂θ · ∂g(x2)/∂θᵀ with g = Σ_o f_o / √O, i.e. the mean over all O × O
blocks entries of the full NTK, (1/O) Σ_{o,o'} Θ_{oo'}(x1, x2). Mohamadi & Sutherland (2023)
show Θ ≈ Θ_p ⊗ I_O for wide networks; TE-NAS scores architectures with it. It costs one
output direction instead of O; `benchmarks/dataset.py` measures how far it is from the full
NTK.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

from ntk_zoo.ntk.api import ntk_fn
from ntk_zoo.ntk.typing import PyTree

__all__ = ["pseudo_ntk_fn"]


def pseudo_ntk_fn(f: Callable, *, logit_axis: int = -1, **ntk_fn_kwargs) -> Callable:
  """`ntk_fn` of `g(params, x) = sum(f(params, x), logit_axis) / sqrt(O)`: the pseudo-NTK.

  Args:
    f: `f(params, x, **kwargs) -> logits`, each output leaf with its O logits on `logit_axis`.
    logit_axis: the axis summed (not the batch axis).
    **ntk_fn_kwargs: passed to `ntk_fn` (implementation, vmap_axes, memory_budget, ...);
      `trace_axes` defaults to () (the other output axes, such as the batch, are kept).

  Returns:
    `kernel(x1, x2=None, params)`: for (N, O) logits an (N1, N2) kernel equal to the mean of
    the full NTK's O × O blocks, (1/O) Σ_{o,o'} Θ(x1, x2)[:, :, o, o'].
  """
  def g(params: PyTree, x: PyTree, **kwargs) -> PyTree:
    out = f(params, x, **kwargs)
    return jax.tree_util.tree_map(
        lambda o: o.sum(logit_axis) / math.sqrt(o.shape[logit_axis]), out)

  ntk_fn_kwargs.setdefault("trace_axes", ())
  return ntk_fn(g, **ntk_fn_kwargs)
