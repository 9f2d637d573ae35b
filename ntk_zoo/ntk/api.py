"""`ntk_fn`: the entry point. Argument checking, the implementation enum, dispatch to engines."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.ntk import auto, memory
from ntk_zoo.ntk.options import NTKOptions, VmapAxes, canonicalize_vmap_axes
from ntk_zoo.ntk.problem import Problem
from ntk_zoo.ntk.typing import Engine, KernelFn, PyTree, TreeDef


class NonFiniteInputWarning(UserWarning):
  """Inputs or params hold NaN or inf, so the kernel will too (see `ntk_fn(check_finite=...)`)."""


class Implementation(enum.Enum):
  """How the NTK is computed. All give the same kernel to float tolerance; only cost differs.

  * JACOBIAN_CONTRACTION: instantiate J = ∂f/∂θ for both batches and contract. Cost
    N·O·[FP] + N²·O²·P. The reference; best only when O is tiny and P small.
  * NTK_VECTOR_PRODUCTS: Θ·v = JVP(x1)[VJP(x2)(v)] over the columns of the identity. Cost
    N²·O·[FP]. Use for N = 1, models without weight sharing, or O > width.
  * STRUCTURED_DERIVATIVES: linearize f, and contract ∂f/∂y · ∂y/∂θ · ∂y/∂θᵀ · ∂f/∂yᵀ per
    primitive y using the structure of ∂y/∂θ. Cost N·O·[FP] + N·O·G + N·[J − O·P]; the fastest
    and leanest in most real models (CNNs, transformers, wide FCNs with O < width).
  * AUTO: estimate each method's cost on the actual program and pick the cheapest.
  """
  AUTO = "auto"
  JACOBIAN_CONTRACTION = "jacobian_contraction"
  NTK_VECTOR_PRODUCTS = "ntk_vector_products"
  STRUCTURED_DERIVATIVES = "structured_derivatives"


_ALIASES = {
    "auto": Implementation.AUTO, 0: Implementation.AUTO,
    "jacobian_contraction": Implementation.JACOBIAN_CONTRACTION, "jc": Implementation.JACOBIAN_CONTRACTION,
    "jacobian": Implementation.JACOBIAN_CONTRACTION, 1: Implementation.JACOBIAN_CONTRACTION,
    "ntk_vector_products": Implementation.NTK_VECTOR_PRODUCTS, "vp": Implementation.NTK_VECTOR_PRODUCTS,
    "ntk_vp": Implementation.NTK_VECTOR_PRODUCTS, 2: Implementation.NTK_VECTOR_PRODUCTS,
    "structured_derivatives": Implementation.STRUCTURED_DERIVATIVES,
    "structured": Implementation.STRUCTURED_DERIVATIVES, "sd": Implementation.STRUCTURED_DERIVATIVES,
    3: Implementation.STRUCTURED_DERIVATIVES,
}


def canonicalize_implementation(implementation) -> Implementation:
  if isinstance(implementation, Implementation):
    return implementation
  if hasattr(implementation, "value") and not isinstance(implementation, (str, int)):
    implementation = implementation.value  # e.g. neural-tangents' NtkImplementation enum.
  key = implementation.lower() if isinstance(implementation, str) else implementation
  if key not in _ALIASES:
    raise ValueError(
        f"Unknown implementation {implementation!r}. Use one of 'auto', 'jacobian_contraction', "
        "'ntk_vector_products', 'structured_derivatives' (or an `Implementation` member).")
  return _ALIASES[key]


def _engines() -> dict[str, Engine]:
  """The concrete engines by implementation name (imported lazily: no import cycles)."""
  from ntk_zoo.ntk import jacobian, ntk_vp  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk.structured import engine as structured  # pylint: disable=g-import-not-at-top
  return {
      Implementation.JACOBIAN_CONTRACTION.value: jacobian.ENGINE,
      Implementation.NTK_VECTOR_PRODUCTS.value: ntk_vp.ENGINE,
      Implementation.STRUCTURED_DERIVATIVES.value: structured.STRUCTURED,
  }


def ntk_fn(f: Callable, *, implementation: str | Implementation = "auto",
           trace_axes: Sequence[int] = (-1,), diagonal_axes: Sequence[int] = (),
           vmap_axes: int | VmapAxes | tuple | None = None,
           memory_budget: int | float | str | None = None,
           check_finite: bool = True) -> KernelFn:
  """Returns a function computing the finite-width empirical NTK of `f`.

  Θ(x1, x2) = Σ_l ∂f(θ, x1)/∂θˡ · ∂f(θ, x2)/∂θˡᵀ, summed over every leaf θˡ of `params`.
  Argument meaning and output shapes follow neural-tangents' `empirical_ntk_fn`, so code can
  switch between the two.

  Args:
    f: `f(params, x, **f_kwargs) -> outputs`. `params`, `x` and the outputs may be arbitrary
      pytrees; every params leaf must be a float array (it is differentiated).
    implementation: "auto" (default), "jacobian_contraction", "ntk_vector_products" or
      "structured_derivatives" (also "jc"/"vp"/"sd", 0-3, or an `Implementation`).
    trace_axes: output axes reduced by the *mean* over their diagonal, e.g. (-1,) for the logit
      axis (N1×N2 kernel), () for the full NTK.
    diagonal_axes: output axes of which only the diagonal is wanted, e.g. (0,) for Θ(x_i, x_i).
      Must not overlap with `trace_axes`.
    vmap_axes: None, or the batch axis (int) of inputs and outputs along which `f` is
      per-example (no BatchNorm-in-training mixing across examples), or `VmapAxes(inputs,
      outputs)` with pytrees of axes, or neural-tangents' `(in_axes, out_axes, {})`. Lets
      engines work per example (cheaper) instead of treating the batch as part of the output.
    memory_budget: peak memory the computation may use, in bytes or as a string ("8GB",
      "512MiB"). Default: a safe fraction of what the device has free when the kernel is
      first called (on CPU, 60 % of the available RAM). Engines plan their blocking (of output
      directions) to stay under it; a budget too small for any plan raises `BudgetError`
      naming the smallest budget that would work, before anything heavy runs. Blocked kernels
      equal unblocked ones to float tolerance.
    check_finite: warn (`NonFiniteInputWarning`, once per kernel) when x1, x2 or params
      contain NaN or inf. Only concrete arrays are checked, by one small jitted reduction
      before the kernel runs; under `jax.jit` the values are tracers and nothing is checked
      (the jitted kernel has no added cost). False skips the check; a warnings filter on
      `NonFiniteInputWarning` silences it.

  Returns:
    `kernel(x1, x2=None, params, **f_kwargs)` (x2=None means x2 = x1, computed as a symmetric
    kernel). It returns a pytree shaped like `f`'s output, one kernel per output leaf. For an
    output leaf of shape (N, O): trace_axes=(-1,) gives (N1, N2); trace_axes=() gives
    (N1, N2, O1, O2); trace_axes=(), diagonal_axes=(0,) gives (N, O1, O2). In general, walking
    the leaf's axes in order, a traced axis disappears, a diagonal axis appears once and any
    other axis appears as an adjacent pair (x1's, x2's): an output (N, H, O) with
    trace_axes=(-1,) gives (N1, N2, H1, H2). The kernel is jit-able, differentiable with
    respect to `params` and the inputs, and computed in the dtype of `f`'s output (float64
    when `jax_enable_x64` is on and the inputs/params are float64). `f_kwargs` are passed
    unchanged to both evaluations of `f`.
    `kernel.decisions` maps each input signature seen to the `Decision` taken: the method (for
    "auto", the cheapest that fits), its `Plan` (blocking, estimated FLOPs and peak memory)
    and the estimates of the methods considered.

  Example:
    >>> kernel = ntk_fn(apply, trace_axes=(), vmap_axes=0)
    >>> theta = jax.jit(kernel)(x1, x2, params)   # (N1, N2, O, O)
  """
  impl = canonicalize_implementation(implementation)
  opts = NTKOptions(
      trace_axes=_as_axes(trace_axes, "trace_axes"),
      diagonal_axes=_as_axes(diagonal_axes, "diagonal_axes"),
      vmap_axes=canonicalize_vmap_axes(vmap_axes))
  overlap = set(opts.trace_axes) & set(opts.diagonal_axes)
  if overlap:
    raise ValueError(
        f"trace_axes {opts.trace_axes} and diagonal_axes {opts.diagonal_axes} overlap on "
        f"{sorted(overlap)}: an axis is either traced (reduced) or diagonal (kept once). Remove it "
        "from one of them.")
  parsed_budget = memory.parse_budget(memory_budget)
  engines = _engines()
  decisions: dict[str, auto.Decision] = {}
  resolved: list[int] = []
  warned: list[bool] = []

  def kernel(x1: PyTree, x2: PyTree | None = None, params: PyTree = None, **f_kwargs) -> PyTree:
    if params is None:
      raise TypeError("kernel(x1, x2, params, **f_kwargs): `params` is required.")
    _check_params(params)
    if x2 is x1:
      x2 = None
    _check_inputs(x1, x2, opts)
    fk = (lambda p, x: f(p, x, **f_kwargs)) if f_kwargs else f
    out_shapes = _check_outputs(fk, params, x1, x2, opts)
    if check_finite and not warned and _warn_non_finite(x1, x2, params):
      warned.append(True)
    out_shapes2 = out_shapes if x2 is None else jax.eval_shape(fk, params, x2)
    problem = Problem(fk, params, x1, x2, opts, out_shapes, out_shapes2)
    if not resolved:
      resolved.append(parsed_budget or memory.default_budget())
    budget = resolved[0]
    key = auto.signature(problem, budget) + _kwargs_signature(f_kwargs)
    decision = decisions.get(key)
    if decision is None:
      candidates = engines if impl is Implementation.AUTO else {impl.value: engines[impl.value]}
      decision = auto.choose(problem, budget, candidates, verify=True)
      decision = dataclasses.replace(decision, signature=key)
      decisions[key] = decision
    kernel_fn.last_decision = decision
    kernels = engines[decision.chosen].kernel(problem, decision.plan)
    # The kernel of each output leaf is in that leaf's dtype (engines may compute a float32
    # kernel for float32 params under a float64 output).
    return jax.tree_util.tree_map(lambda k, o: k.astype(o.dtype), kernels, out_shapes)

  kernel_fn = cast(KernelFn, kernel)  # The function, with the attributes `KernelFn` declares.
  kernel_fn.implementation = impl
  kernel_fn.options = opts
  kernel_fn.memory_budget = parsed_budget
  kernel_fn.decisions = decisions
  kernel_fn.last_decision = None
  return kernel_fn


def _kwargs_signature(f_kwargs: dict) -> str:
  if not f_kwargs:
    return ""
  return repr(sorted((jax.tree_util.keystr(k),
                      f"{np.dtype(v.dtype).name}{list(np.shape(v))}" if hasattr(v, "dtype")
                      else repr(v)) for k, v in jax.tree_util.tree_flatten_with_path(f_kwargs)[0]))


# ---------------------------------------------------------------------------------------------
# Argument checking. Messages say what is wrong and how to fix it.

def _as_axes(axes, name: str) -> tuple[int, ...]:
  if isinstance(axes, int):
    axes = (axes,)
  try:
    out = tuple(int(a) for a in axes)
  except TypeError:
    raise TypeError(f"{name} must be a sequence of ints, got {axes!r}.") from None
  if len(set(out)) != len(out):
    raise ValueError(f"{name} {out} repeats an axis; list each axis once.")
  return out


def _path(kp) -> str:
  return jax.tree_util.keystr(kp) or "<root>"


def _check_params(params: PyTree) -> None:
  for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
          f"params{_path(kp)} has dtype {dtype if dtype is not None else type(leaf).__name__}; "
          "every params leaf is differentiated, so it must be a float array. Move integer or "
          "constant state out of `params` (close over it in `f`, or pass it as an f_kwarg).")


def _batch_axes(x: PyTree, opts: NTKOptions) -> list[int | None]:
  from ntk_zoo.ntk._tree import broadcast_prefix  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves(x)
  if opts.vmap_axes is None:
    return [0 if np.ndim(l) else None for l in leaves]
  try:
    axes = broadcast_prefix(opts.vmap_axes.inputs, x)
  except ValueError as e:
    raise ValueError(
        f"vmap_axes inputs {opts.vmap_axes.inputs!r} do not match the structure of x "
        f"{jax.tree_util.tree_structure(x)}: give one int, or a pytree of ints/None with x's "
        f"structure.") from e
  for a, l in zip(axes, leaves):
    if a is not None and not -np.ndim(l) <= a < np.ndim(l):
      raise ValueError(f"vmap_axes input axis {a} is out of range for an input of shape "
                       f"{np.shape(l)}.")
  return [None if a is None else a % np.ndim(l) for a, l in zip(axes, leaves)]


def _check_inputs(x1: PyTree, x2: PyTree | None, opts: NTKOptions) -> None:
  axes = _batch_axes(x1, opts)  # Validates vmap_axes against x1 even when x2 is None.
  if x2 is None:
    return
  t1: TreeDef = jax.tree_util.tree_structure(x1)
  t2: TreeDef = jax.tree_util.tree_structure(x2)
  if t1 != t2:
    raise ValueError(
        f"x1 and x2 have different pytree structures:\n  x1: {t1}\n  x2: {t2}\n"
        "Pass two batches of the same kind of input (x2=None computes Θ(x1, x1)).")
  for a, (kp, l1), l2 in zip(axes, jax.tree_util.tree_flatten_with_path(x1)[0],
                             jax.tree_util.tree_leaves(x2)):
    s1, s2 = list(np.shape(l1)), list(np.shape(l2))
    if a is not None and len(s1) == len(s2):
      s1.pop(a), s2.pop(a)
    if s1 != s2:
      raise ValueError(
          f"x1{_path(kp)} has shape {np.shape(l1)} but x2{_path(kp)} has shape {np.shape(l2)}: "
          f"inputs may differ only in their batch axis ({'axis ' + str(a) if a is not None else 'none'}). "
          "Reshape/pad the inputs to the same per-example shape, or set vmap_axes to the axis "
          "that is the batch axis.")


@jax.jit
def _finite_leaves(leaves: list) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves])


def _warn_non_finite(x1: PyTree, x2: PyTree | None, params: PyTree) -> bool:
  """Warns if a concrete float leaf of x1, x2 or params has NaN/inf; returns whether it did."""
  from ntk_zoo.ntk import _compat  # pylint: disable=g-import-not-at-top
  named = [(f"{name}{_path(kp)}", l)
           for name, tree in (("x1", x1), ("x2", x2), ("params", params))
           for kp, l in jax.tree_util.tree_flatten_with_path(tree)[0]
           if hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.inexact)
           and not _compat.is_tracer(l)]
  if not named:
    return False
  finite = _finite_leaves([l for _, l in named])
  if _compat.is_tracer(finite):  # Inside an outer trace (e.g. jit of a function calling the
    return False                 # kernel with closed-over arrays): unused, so dropped.
  finite = np.asarray(finite)
  bad = [name for (name, _), ok in zip(named, finite) if not ok]
  if not bad:
    return False
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.warn(
      f"{bad[0]} contains NaN or inf{f' (and {len(bad) - 1} more leaves)' if len(bad) > 1 else ''}"
      ", so the NTK will have NaN/inf entries. Check the inputs and the parameters (e.g. "
      "preprocessing, a diverged checkpoint). To silence: ntk_fn(..., check_finite=False), or "
      "warnings.filterwarnings('ignore', category=ntk_zoo.NonFiniteInputWarning).",
      NonFiniteInputWarning, stacklevel=3)
  return True


def _check_outputs(f: Callable, params: PyTree, x1: PyTree, x2: PyTree | None,
                   opts: NTKOptions) -> PyTree:
  """Output shapes of f(params, x1); checks they are float arrays and the axes fit them."""
  outs = []
  for x in (x1,) if x2 is None else (x1, x2):
    try:
      out = jax.eval_shape(f, params, x)
    except TypeError as e:
      if "is not a valid JAX type" in str(e):
        raise TypeError(f"f must return a pytree of arrays; evaluating it failed with: {e}") from e
      raise
    outs.append(out)
  for kp, leaf in jax.tree_util.tree_flatten_with_path(outs[0])[0]:
    if not isinstance(leaf, jax.ShapeDtypeStruct):
      raise TypeError(f"f must return a pytree of arrays; output{_path(kp)} is {leaf!r}.")
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      raise TypeError(
          f"f's output{_path(kp)} has dtype {leaf.dtype}; the NTK needs float outputs. Return "
          "logits (not argmax/labels) from f.")
    ndim = len(leaf.shape)
    for name, axes in (("trace_axes", opts.trace_axes), ("diagonal_axes", opts.diagonal_axes)):
      bad = [a for a in axes if not -ndim <= a < ndim]
      if bad:
        raise ValueError(
            f"{name} {axes} has axis {bad[0]} out of range for f's output{_path(kp)} of shape "
            f"{leaf.shape} (valid: {-ndim}..{ndim - 1}).")
    if len({a % ndim for a in opts.trace_axes} & {a % ndim for a in opts.diagonal_axes}):
      raise ValueError(
          f"trace_axes {opts.trace_axes} and diagonal_axes {opts.diagonal_axes} name the same "
          f"axis of f's output{_path(kp)} of shape {leaf.shape}; an axis is either traced or "
          "diagonal.")
  if opts.vmap_axes is not None:
    _check_output_batch_axes(f, params, x1, outs[0], opts)
  if len(outs) == 2:
    for (kp, o1), o2 in zip(jax.tree_util.tree_flatten_with_path(outs[0])[0],
                            jax.tree_util.tree_leaves(outs[1])):
      ndim = len(o1.shape)
      for a in (*opts.trace_axes, *opts.diagonal_axes):
        if len(o2.shape) != ndim or o1.shape[a] != o2.shape[a]:
          raise ValueError(
              f"f's output{_path(kp)} has shape {o1.shape} on x1 and {o2.shape} on x2, but "
              f"traced/diagonal axis {a} must have the same size on both. Use equal batch sizes "
              "for diagonal_axes=(0,), or remove the axis from trace/diagonal axes.")
  return outs[0]


def _check_output_batch_axes(f: Callable, params: PyTree, x: PyTree, out: PyTree,
                             opts: NTKOptions) -> None:
  """Every output leaf has its batch axis, of the inputs' batch size (per-example `f`)."""
  from ntk_zoo.ntk._tree import broadcast_prefix  # pylint: disable=g-import-not-at-top
  va = opts.vmap_axes
  assert va is not None, "only called with vmap_axes set"
  try:
    axes = broadcast_prefix(va.outputs, out)
  except ValueError as e:
    raise ValueError(
        f"vmap_axes outputs {va.outputs!r} do not match the structure of f's output "
        f"{jax.tree_util.tree_structure(out)}: give one int, or a pytree of ints with the "
        "output's structure.") from e
  out_leaves = jax.tree_util.tree_flatten_with_path(out)[0]
  for a, (kp, leaf) in zip(axes, out_leaves):
    if a is None or not -len(leaf.shape) <= a < len(leaf.shape):
      raise ValueError(
          f"vmap_axes output axis {a} is not a valid batch axis of f's output{_path(kp)} of "
          f"shape {leaf.shape}: every output leaf needs its batch axis.")
  in_axes = _batch_axes(x, opts)
  batched = [(kp, l, a) for a, (kp, l) in zip(in_axes, jax.tree_util.tree_flatten_with_path(x)[0])
             if a is not None]
  if not batched:
    return
  sizes = {np.shape(l)[a] for _, l, a in batched}
  if len(sizes) > 1:
    raise ValueError(
        "vmap_axes gives input batch axes of different sizes: "
        + ", ".join(f"x1{_path(kp)} {np.shape(l)} axis {a}" for kp, l, a in batched)
        + ". Every batched input leaf needs the same number of examples on its batch axis.")
  n = sizes.pop()
  kp_x, l_x, a_x = batched[0]
  for a, (kp, leaf) in zip(axes, out_leaves):
    if leaf.shape[a] != n:
      raise ValueError(
          f"vmap_axes output axis {a} of f's output{_path(kp)} of shape {leaf.shape} has size "
          f"{leaf.shape[a]}, but the inputs' batch axis has size {n} (axis {a_x} of "
          f"x1{_path(kp_x)} of shape {np.shape(l_x)}): a per-example f keeps the batch axis, "
          f"with the same size, in its outputs. {_suggest_vmap_axes(x, out)}")
  if n > 1 and any(list(leaf.shape).count(n) > 1 for _, leaf in out_leaves):
    _check_one_example(f, params, x, in_axes, axes, out_leaves)


def _suggest_vmap_axes(x: PyTree, out: PyTree) -> str:
  """Which int `vmap_axes` would be consistent with the inputs' and outputs' shapes."""
  shapes = [np.shape(l) for l in jax.tree_util.tree_leaves(x) if np.ndim(l)]
  shapes += [l.shape for l in jax.tree_util.tree_leaves(out)]
  ok = [k for k in range(min(len(s) for s in shapes))
        if len({s[k] for s in shapes}) == 1]
  if ok:
    return (f"Valid choices for these shapes: vmap_axes={ok[0]}"
            + (f" (or any of {ok})" if len(ok) > 1 else "")
            + ", or vmap_axes=None (f is not per-example).")
  return ("No single axis is a batch axis of every input and output: pass VmapAxes(inputs, "
          "outputs) with per-leaf axes, or vmap_axes=None (f is not per-example).")


def _check_one_example(f: Callable, params: PyTree, x: PyTree, in_axes: list[int | None],
                       axes: list[int], out_leaves: list) -> None:
  """f on a batch of one example (abstractly): each output batch axis must have size 1.

  Run only when the batch size also occurs on other output axes, where sizes cannot tell.
  """
  leaves, tree = jax.tree_util.tree_flatten(x)
  one = [jax.ShapeDtypeStruct(
      tuple(1 if i == a else d for i, d in enumerate(np.shape(l))), jnp.result_type(l))
      for l, a in zip(leaves, in_axes)]
  out1 = jax.eval_shape(f, params, jax.tree_util.tree_unflatten(tree, one))
  out1 = jax.tree_util.tree_leaves(out1)
  for a, (kp, leaf), o in zip(axes, out_leaves, out1):
    if o.shape[a] != 1:
      raise ValueError(
          f"vmap_axes output axis {a} is not the batch axis of f's output{_path(kp)}: the output "
          f"has shape {leaf.shape}, and {o.shape} on a batch of one example, where axis {a} "
          "would have size 1. Set the output batch axis to the axis that indexes the examples.")
