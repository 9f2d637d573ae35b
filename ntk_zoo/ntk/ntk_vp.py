"""NTK-vector products: Θ·v = J1 (J2ᵀ v), a VJP at x2 followed by a JVP at x1.

Applied to the columns of the identity over x2's outputs, this builds the kernel without
instantiating the Jacobians. Cost (paper Table 2): N²·O·[FP]; best for models without weight
sharing (FCNs) and N = 1. With `vmap_axes`, work is per pair of examples. Columns are taken in
chunks (`lax.map` over chunks of a `vmap`); the chunk size is what the memory plan sets: each
chunk holds one parameter-sized tangent per column.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.cost import ZERO, Estimate, eqn_cost
from ntk_zoo.ntk.memory import BudgetError, Plan, fmt_bytes
from ntk_zoo.ntk.options import Role
from ntk_zoo.ntk.problem import Problem
from ntk_zoo.ntk.structured import flatten
from ntk_zoo.ntk.typing import Engine, PyTree


def full_kernel(f: Callable, params: PyTree, x1: PyTree, x2: PyTree, leaf: int,
                chunk: int = _tree.MAX_VMAP_ROWS) -> jax.Array:
  """Θ for output leaf `leaf` with every axis kept: shape (*out_shape1, *out_shape2)."""
  _, f1_lin = jax.linearize(lambda p: f(p, x1), params)
  f1_lin = flatten.evaluable(f1_lin, params)  # Through jax.custom_vjp too.
  out2, vjp2 = jax.vjp(lambda p: f(p, x2), params)
  out2_leaves, out2_tree = jax.tree_util.tree_flatten(out2)
  o2 = out2_leaves[leaf]

  def column(e):
    cts = [e if i == leaf else jnp.zeros_like(l) for i, l in enumerate(out2_leaves)]
    tangent = vjp2(jax.tree_util.tree_unflatten(out2_tree, cts))[0]
    return jax.tree_util.tree_leaves(f1_lin(tangent))[leaf]

  cols = _tree.map_rows(column, _tree.basis(o2.shape, o2.dtype), chunk)  # (size2, *out1)
  cols = cols.reshape((*o2.shape, *cols.shape[1:]))
  n2 = o2.ndim
  return jnp.moveaxis(cols, tuple(range(n2)), tuple(range(cols.ndim - n2, cols.ndim)))


# XLA on CPU runs a convolution's weight gradient vmapped over output directions (a
# batch-grouped convolution) 3–5× slower per FLOP than an ordinary convolution (ResNet-50's
# layers, 64 directions: 7–15 vs 29–54 GFLOP/s measured side by side). The VJP of this engine
# is JAX's own, so its weight gradients pay that; so does the JVP's convolution with a batched
# weight tangent (a feature-grouped convolution under vmap). The cost model counts both this
# much more. (Counting only the VJP's, auto chose NTK-vp for ResNet-50 224² O=1000 under a
# 10 GB budget, estimated 57 TFLOP against 78 for SD's plan; it ran over 45 min.)
WEIGHT_GRAD_CONV_SLOWDOWN = {"cpu": 4.0}


def _column_cost(program) -> Estimate:
  """A JVP plus a VJP of the linear program g, for one output column."""
  jaxpr = program.jaxpr
  linear = {v for k in program.g_eqns for v in jaxpr.eqns[k].outvars}
  linear.update(jaxpr.invars[program.n_consts:])
  slowdown = WEIGHT_GRAD_CONV_SLOWDOWN.get(jax.default_backend(), 1.0)
  total = Estimate(0.0, 0.0)
  for k in program.g_eqns:
    eqn = jaxpr.eqns[k]
    c = eqn_cost(eqn)
    weight_grad = (eqn.primitive is C.prims.conv_general_dilated_p
                   and not C.is_literal(eqn.invars[1]) and eqn.invars[1] in linear)
    total = total + (Estimate(2 * c.flops * slowdown, 2 * c.bytes) if weight_grad else c + c)
  return total


def _copies(problem: Problem, pe) -> tuple[int, int, int]:
  """(pairs, n1, n2): how many per-example copies the vmapped pair kernels hold of a value that
  depends on both examples, on x1's only, and on x2's only."""
  if not pe.per_example:
    return 1, 1, 1
  n1, n2 = pe.n
  roles = [problem.opts.roles(len(np.shape(o1)))[a]
           for (o1, _), a in zip(problem.out_leaves(), pe.batch_axes)]
  if all(r is Role.PAIR for r in roles):
    return n1 * n2, n1, n2
  return n1 * n2 if Role.PAIR in roles else n1, n1, n2  # diagonal/traced: one vmap over (i, i)


class VectorProductEngine(Engine):
  """NTK-vector products with the column chunk sized to the memory budget."""

  name = "ntk_vector_products"

  def plan(self, problem: Problem, budget: int,
           calibration: dict[str, float] | None = None) -> Plan:
    full_budget = budget
    budget = int(budget / (calibration or {}).get("chunks", 1.0))
    from ntk_zoo.ntk.structured import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
    from ntk_zoo.ntk.structured.blocking import letters  # pylint: disable=g-import-not-at-top
    from ntk_zoo.ntk.structured.engine import JACOBIAN  # pylint: disable=g-import-not-at-top
    from ntk_zoo.ntk.structured.sides import AbstractSide  # pylint: disable=g-import-not-at-top
    prep = JACOBIAN.prepare(problem)
    program, pe = prep.lp.program, prep.pe
    pairs, n1, n2 = _copies(problem, pe)
    param_bytes = sum(math.prod(np.shape(l)) * np.dtype(l.dtype).itemsize
                      for l in jax.tree_util.tree_leaves(problem.params))
    # Per column: the parameter tangent, plus the working set of one backward/forward pass,
    # measured as the Jacobian sweep's live cotangents for one row.
    side = AbstractSide(program, 1, prep.lp.batched)
    work = 0
    for m, leaf in enumerate(prep.leaves):
      probe = sweep_lib.Probe()
      cts0 = [jax.ShapeDtypeStruct((1, 1, *leaf.shapes[0]), leaf.dtype)]
      s1, s2 = leaf.shapes
      spec = sweep_lib.SweepSpec(m, letters(leaf), ((1,) * len(s1), (1,) * len(s2)))
      sweep_lib.sweep(program, [side], cts0, spec, probe=probe)
      work = max(work, probe.peak_live)
    # Under vmap a value is batched only over what it depends on: x1's linearization residuals
    # over x1's examples, x2's VJP and its parameter tangents over x2's examples; the JVP's
    # tangent activations over the pairs.
    fixed = (n1 + n2) * side.const_bytes
    per_col = n2 * (param_bytes + work) + pairs * work
    outs = sum(math.prod(o1.shape) * math.prod(o2.shape) * o1.dtype.itemsize
               for o1, o2 in problem.out_leaves())
    fixed += 2 * outs
    peak1 = fixed + per_col
    if peak1 > budget:
      raise BudgetError(
          f"{self.name}: one output direction at a time needs about {fmt_bytes(peak1)}, over the "
          f"memory budget of {fmt_bytes(budget)}. Pass memory_budget >= {fmt_bytes(peak1)}, "
          "fewer examples per call, or another implementation.", int(math.ceil(peak1)))
    chunk = int(max(1, min(_tree.MAX_VMAP_ROWS, (budget - fixed) // per_col)))
    # Cost: a JVP and a VJP of the linear program per column and pair.
    g_cost = _column_cost(program)
    total = ZERO  # Stays ZERO when f has no output leaves (the kernel is then empty).
    for _, shape2 in pe.out_shapes:
      cols = math.prod(shape2)
      total = total + g_cost * (cols * pairs)
    if flatten.custom_lin_names(program.jaxpr):
      # A custom_vjp whose bwd cannot be transposed has no forward derivative: never chosen
      # by auto (asked for explicitly, the kernel raises naming the function).
      total = Estimate(math.inf, math.inf)
    return Plan(self.name, tuple((chunk,) for _ in prep.leaves), fixed + chunk * per_col,
                total.flops, total.bytes, full_budget, "chunks")

  def kernel(self, problem: Problem, plan: Plan) -> PyTree:
    opts, params = problem.opts, problem.params
    x1, x2 = problem.xs
    out_leaves, out_tree = jax.tree_util.tree_flatten(problem.out_shapes)
    kernels = []
    if opts.vmap_axes is None:
      for m, o in enumerate(out_leaves):
        full = full_kernel(problem.f, params, x1, x2, m, plan.blocks[m][0])
        kernels.append(_tree.apply_roles(full, opts.roles(len(o.shape))))
      return jax.tree_util.tree_unflatten(out_tree, kernels)

    f1, in_axes, out_axes = _tree.single_example_fn(problem.f, x1, problem.out_shapes, opts)
    for m, o in enumerate(out_leaves):
      roles = opts.roles(len(o.shape))
      rest_roles = tuple(r for a, r in enumerate(roles) if a != out_axes[m])
      chunk = plan.blocks[m][0]

      def pair_kernel(x1i, x2j, m=m, rest_roles=rest_roles, chunk=chunk):
        return _tree.apply_roles(full_kernel(f1, params, x1i, x2j, m, chunk), rest_roles)

      kernels.append(_tree.over_examples(pair_kernel, x1, x2, in_axes, roles, out_axes[m]))
    return jax.tree_util.tree_unflatten(out_tree, kernels)


ENGINE = VectorProductEngine()
