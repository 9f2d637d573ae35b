"""Structured derivatives (and Jacobian contraction) by a memory-planned reverse sweep.

1. *Trace once*: linearize f in θ at an abstract example, flatten, find every parameter use and
   its structure (`program.py`). Residuals that depend on the example are computed per example
   (vmapped), the others once.
2. *Plan*: run the sweep's control flow on shapes (`sides.AbstractSide`) to measure the peak of
   live cotangents and the pair terms' shapes; pick each pair term's route (contraction order)
   and, if the whole output does not fit the memory budget, the largest block of output
   directions that does (`planning.py`, blockings in `blocking.py`).
3. *Sweep*: for each block (pair), pull the output directions back through the linear program in
   lockstep for x1 and x2, contracting each use's pair term as soon as both cotangents exist
   (`sweep.py`). Blocks run in a `lax.scan`, so the program compiles once whatever the count
   (`execution.py`).

Jacobian contraction is the same sweep with every parameter cut at itself (its Jacobian
materialized, one leaf at a time): `SweepEngine(materialize=True)`.
"""

from __future__ import annotations

import jax
import numpy as np

from ntk_zoo.ntk import memory
from ntk_zoo.ntk.memory import Plan
from ntk_zoo.ntk.problem import PerExample, Problem, per_example
from ntk_zoo.ntk.structured import blocking, execution, planning
from ntk_zoo.ntk.structured.blocking import Prepared
from ntk_zoo.ntk.structured.program import (LinearProgram, Program, UnstructuredPrimitiveWarning,
                                            trace_program)
from ntk_zoo.ntk.typing import Engine, PyTree

__all__ = ["JACOBIAN", "STRUCTURED", "SweepEngine", "UnstructuredPrimitiveWarning", "kernel"]


class SweepEngine(Engine):
  """Structured derivatives (or, with `materialize`, Jacobian contraction) under a budget."""

  def __init__(self, name: str, materialize: bool = False):
    self.name = name
    self.materialize = materialize
    self._programs: dict = {}

  def prepare(self, problem: Problem) -> Prepared:
    """Traces (or takes from the cache) the linear programs of x1 and x2, and the leaves."""
    pe = per_example(problem)
    examples = pe.examples(problem)
    lps = [self._program(problem, pe, ex) for ex in examples]
    if _signature(examples[0]) == _signature(examples[1]):
      lps[1] = lps[0]
    else:
      _check_same_structure(lps[0].program, lps[1].program)
    return Prepared(lps[0], lps[1], pe, blocking.leaves(problem, pe))

  def _program(self, problem: Problem, pe: PerExample, example) -> LinearProgram:
    key: tuple | None = (problem.f, _signature((problem.params, example)), problem.opts)
    try:
      lp = self._programs.get(key)
    except TypeError:  # Unhashable f: no caching.
      key, lp = None, None
    if lp is None:
      lp = trace_program(pe.f1, problem.params, example, materialize=self.materialize)
      if key is not None:
        if len(self._programs) > 16:
          self._programs.clear()
        self._programs[key] = lp
    return lp

  def plan(self, problem: Problem, budget: int, calibration: dict[str, float] | None = None,
           prep: Prepared | None = None) -> Plan:
    """The cheapest blocking of every output leaf that fits `budget` (see `planning.plan`)."""
    prep = prep or self.prepare(problem)
    return planning.plan(self.name, prep, problem, budget, calibration)

  def kernel(self, problem: Problem, plan: Plan, prep: Prepared | None = None) -> PyTree:
    """The kernels under `plan`: one per output leaf, shaped as `ntk_fn` documents."""
    prep = prep or self.prepare(problem)
    return execution.kernel(prep, problem, plan)


def _check_same_structure(p1: Program, p2: Program) -> None:
  if ([(u.leaf, u.site) for u in p1.uses] != [(u.leaf, u.site) for u in p2.uses]
      or p1.g_eqns != p2.g_eqns):
    raise ValueError(
        "Structured derivatives: f traced to differently structured programs on x1 and x2 "
        "(its operations depend on the batch size). Pass vmap_axes so that f is traced per "
        "example, or use implementation='ntk_vector_products'.")


def _signature(tree) -> tuple:
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return (treedef, tuple((tuple(np.shape(l)), np.dtype(l.dtype).name) for l in leaves))


STRUCTURED = SweepEngine("structured_derivatives")
JACOBIAN = SweepEngine("jacobian_contraction", materialize=True)


def kernel(f, params, x1, x2, opts, out_shapes, budget: int | str | None = None) -> PyTree:
  """The NTK by structured derivatives; see `ntk_zoo.ntk_fn` for the arguments' meaning."""
  problem = Problem(f, params, x1, x2, opts, out_shapes,
                    out_shapes if x2 is None else jax.eval_shape(f, params, x2))
  prep = STRUCTURED.prepare(problem)
  plan = STRUCTURED.plan(problem, memory.resolve(budget), prep=prep)
  return STRUCTURED.kernel(problem, plan, prep)

