"""Structured derivatives: the NTK as Σ over parameter uses of a 4-factor contraction.

For each input batch:
1. *Linearize* f in θ and trace the linear map to a jaxpr; *flatten* it (inline calls, unroll
   scans) so each use of a parameter is a top-level equation (`flatten.py`).
2. *Analyze*: follow each parameter through view ops (reshape/transpose/broadcast/slice...) to
   the equations that consume it; a structure rule describes ∂y/∂θ of each such use without
   instantiating it (`rules*.py`, `structure.py`). Consumers without a rule become identity
   uses at the parameter view (correct, unstructured; a warning names the primitive once).
3. *Cut*: the rest of the program g(y¹…yᴷ) is linear in the uses' outputs; the cotangents
   ∂f/∂yᵏ for every output direction are one vmapped VJP of g (what jacrev does, stopped
   before the weight cotangents).
Then for every parameter, every pair of its uses (k₁ at x1, k₂ at x2) contributes
einsum(∂f₁/∂y₁, factors₁, factors₂, ∂f₂/∂y₂) with θ letters shared between the sides and the
output letters arranged by trace/diagonal axes; einsum's path optimizer picks the order.

Weight sharing is exact: all pairs of uses are summed. Uses of disjoint slices of a stacked
parameter (scanned layers) contribute nothing to each other and are skipped. If two uses of a
leaf see it in incompatible coordinates, that leaf falls back to its materialized Jacobian.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.ntk import _tree
from ntk_zoo.ntk.options import NTKOptions, Role, kernel_subscripts, trace_size
from ntk_zoo.ntk.structured import _compat as C
# The rule modules register their rules on import; importing them here guarantees they are
# registered whichever module of the package a user imports first.
from ntk_zoo.ntk.structured import rules_index, rules_linear, rules_views  # noqa: F401  pylint: disable=unused-import
from ntk_zoo.ntk.structured.flatten import flatten
from ntk_zoo.ntk.structured.rules import IDENTITY_PRIMITIVES, STRUCTURE_RULES, VIEW_RULES
from ntk_zoo.ntk.structured.rules_views import base_view
from ntk_zoo.ntk.structured.structure import (Structure, ThetaLetter, View, identity,
                                              windows_disjoint)

PyTree = Any
log = logging.getLogger(__name__)

_WARNED: set[str] = set()


class UnstructuredPrimitiveWarning(UserWarning):
  """A parameter is consumed by a primitive with no structure rule (correct but slower)."""


def _warn_once(prim_name: str) -> None:
  if prim_name in _WARNED:
    return
  _WARNED.add(prim_name)
  warnings.warn(
      f"Structured derivatives: no structure rule for primitive '{prim_name}' consuming a "
      "parameter; its Jacobian is materialized instead (correct, but slower and larger). "
      "Register a rule with ntk_zoo.ntk.structured.rules.defstructure to speed it up.",
      UnstructuredPrimitiveWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------
# Analysis: where each parameter is used and how.

@dataclasses.dataclass(frozen=True)
class Use:
  """One use of a parameter leaf. `site` says where the program is cut:
  ("eqn", k): the output of equation k; ("operand", k, i): operand i of equation k;
  ("output", j): output j; ("invar", leaf): the parameter itself (materialized Jacobian)."""
  leaf: int
  view: View
  structure: Structure
  site: tuple


@dataclasses.dataclass
class Program:
  jaxpr: C.Jaxpr
  consts: list
  n_consts: int
  uses: list[Use]
  const_eqns: list[int]
  g_eqns: list[int]  # Equations evaluated by g (including cut equations, which read inputs).
  cut_at: dict  # site -> use index
  reach: list[frozenset[int]]  # per output: the uses it depends on

  def cut_aval(self, u: Use):
    kind = u.site[0]
    if kind == "eqn":
      v = self.jaxpr.eqns[u.site[1]].outvars[0]
    elif kind == "operand":
      v = self.jaxpr.eqns[u.site[1]].invars[u.site[2]]
    elif kind == "output":
      v = self.jaxpr.outvars[u.site[1]]
    else:
      v = self.jaxpr.invars[self.n_consts + u.leaf]
    return v.aval


def analyze(closed: C.ClosedJaxpr, n_consts: int, jacobian_leaves: frozenset[int]) -> Program:
  jaxpr = closed.jaxpr
  theta = jaxpr.invars[n_consts:]
  dep = set(theta)
  views: dict = {}
  uses: list[Use] = []
  cut_at: dict = {}
  const_eqns, g_eqns = [], []

  def add_use(leaf, view, structure, site):
    cut_at[site] = len(uses)
    uses.append(Use(leaf, view, structure, site))

  for leaf, v in enumerate(theta):
    if leaf in jacobian_leaves:
      add_use(leaf, base_view(leaf, tuple(v.aval.shape)),
              identity(base_view(leaf, tuple(v.aval.shape))), ("invar", leaf))
    else:
      views[v] = base_view(leaf, tuple(v.aval.shape))

  for k, eqn in enumerate(jaxpr.eqns):
    tpos = [i for i, v in enumerate(eqn.invars) if not C.is_literal(v) and v in dep]
    if not tpos:
      const_eqns.append(k)
      continue
    dep.update(eqn.outvars)
    if len(tpos) == 1 and len(eqn.outvars) == 1 and eqn.invars[tpos[0]] in views:
      view = views[eqn.invars[tpos[0]]]
      rule = VIEW_RULES.get(eqn.primitive)
      new_view = rule(view, eqn) if rule else None
      if new_view is not None:
        views[eqn.outvars[0]] = new_view
        continue
      rule = STRUCTURE_RULES.get(eqn.primitive)
      structure = rule(eqn, tpos[0], view) if rule else None
      if structure is not None:
        add_use(view.leaf, view, structure, ("eqn", k))
        g_eqns.append(k)
        continue
    for i in tpos:
      view = views.get(eqn.invars[i])
      if view is not None:
        add_use(view.leaf, view, identity(view), ("operand", k, i))
        if eqn.primitive not in IDENTITY_PRIMITIVES:
          _warn_once(str(eqn.primitive))
    g_eqns.append(k)

  for j, v in enumerate(jaxpr.outvars):
    if not C.is_literal(v) and v in views:
      view = views[v]
      add_use(view.leaf, view, identity(view), ("output", j))

  reach = _reach(jaxpr, n_consts, g_eqns, cut_at)
  return Program(jaxpr, list(closed.consts), n_consts, uses, const_eqns, g_eqns, cut_at, reach)


def _reach(jaxpr, n_consts, g_eqns, cut_at) -> list[frozenset[int]]:
  """For each output, the set of uses whose cut value it depends on."""
  r: dict = {}
  for site, u in cut_at.items():
    if site[0] == "invar":
      r[jaxpr.invars[n_consts + site[1]]] = frozenset({u})
  for k in g_eqns:
    eqn = jaxpr.eqns[k]
    if ("eqn", k) in cut_at:
      r[eqn.outvars[0]] = frozenset({cut_at[("eqn", k)]})
      continue
    s = frozenset()
    for i, v in enumerate(eqn.invars):
      if ("operand", k, i) in cut_at:
        s |= {cut_at[("operand", k, i)]}
      elif not C.is_literal(v):
        s |= r.get(v, frozenset())
    for v in eqn.outvars:
      r[v] = s
  out = []
  for j, v in enumerate(jaxpr.outvars):
    if ("output", j) in cut_at:
      out.append(frozenset({cut_at[("output", j)]}))
    else:
      out.append(frozenset() if C.is_literal(v) else r.get(v, frozenset()))
  return out


def _pair_status(a: Use, b: Use) -> str:
  """"skip" (no overlap), "ok" (structured contraction), or "jacobian" (incompatible)."""
  if windows_disjoint(a.view.window, b.view.window):
    return "skip"
  if (a.view.window == b.view.window and a.view.theta_letters() == b.view.theta_letters()
      and (a.structure.pair is None) == (b.structure.pair is None)):
    return "ok"
  return "jacobian"


def build_program(closed: C.ClosedJaxpr, n_consts: int) -> Program:
  program = analyze(closed, n_consts, frozenset())
  by_leaf: dict[int, list[Use]] = {}
  for u in program.uses:
    by_leaf.setdefault(u.leaf, []).append(u)
  fallback = frozenset(
      leaf for leaf, us in by_leaf.items()
      if any(_pair_status(a, b) == "jacobian" for a, b in itertools.product(us, us)))
  if fallback:
    log.info("Structured derivatives: leaves %s use incompatible views; materializing their "
             "Jacobians.", sorted(fallback))
    program = analyze(closed, n_consts, fallback)
  return program


# ---------------------------------------------------------------------------------------------
# Evaluation: constants, cut program g, cotangents, factors.

def _bind(eqn, invals):
  outs = eqn.primitive.bind(*invals, **eqn.params)
  return outs if eqn.primitive.multiple_results else [outs]


def _constants(program: Program, const_args: list) -> dict:
  env = dict(zip(program.jaxpr.constvars, program.consts))
  env.update(zip(program.jaxpr.invars[:program.n_consts], const_args))
  for k in program.const_eqns:
    eqn = program.jaxpr.eqns[k]
    outs = _bind(eqn, [v.val if C.is_literal(v) else env[v] for v in eqn.invars])
    env.update(zip(eqn.outvars, outs))
  return env


def _g(program: Program, const_env: dict) -> Callable:
  jaxpr, cut_at = program.jaxpr, program.cut_at

  def g(*cut_values):
    env = {}

    def read(v):
      if C.is_literal(v):
        return v.val
      return env[v] if v in env else const_env[v]

    for site, u in cut_at.items():
      if site[0] == "invar":
        env[jaxpr.invars[program.n_consts + site[1]]] = cut_values[u]
    for k in program.g_eqns:
      eqn = jaxpr.eqns[k]
      if ("eqn", k) in cut_at:
        env[eqn.outvars[0]] = cut_values[cut_at[("eqn", k)]]
        continue
      invals = [cut_values[cut_at[("operand", k, i)]] if ("operand", k, i) in cut_at else read(v)
                for i, v in enumerate(eqn.invars)]
      env.update(zip(eqn.outvars, _bind(eqn, invals)))
    outs = []
    for j, v in enumerate(jaxpr.outvars):
      outs.append(cut_values[cut_at[("output", j)]] if ("output", j) in cut_at else read(v))
    return outs

  return g


@dataclasses.dataclass
class SideResult:
  """Arrays for one input batch: cotangents per (output, use), factors and pair keys per use."""
  cts: dict
  factors: dict
  keys: dict


def side(f: Callable, params: PyTree, x: PyTree, store: list) -> SideResult:
  """Everything the contraction needs from one batch (or one example, under vmap)."""
  theta, theta_tree = jax.tree_util.tree_flatten(params)
  _, f_lin = jax.linearize(lambda *t: f(jax.tree_util.tree_unflatten(theta_tree, t), x), *theta)
  closed = jax.make_jaxpr(f_lin)(*theta)
  n_consts = len(closed.consts)
  flat = flatten(closed)
  program = build_program(flat, n_consts)
  store.append(program)
  const_env = _constants(program, list(closed.consts))

  def read(v):
    return v.val if C.is_literal(v) else const_env[v]

  g = _g(program, const_env)
  # g is linear: transpose it (no forward pass; also handles `custom_lin` from custom_vjp,
  # which has a transpose rule but no JVP).
  avals = [jax.ShapeDtypeStruct(program.cut_aval(u).shape, program.cut_aval(u).dtype)
           for u in program.uses]
  outs = jax.eval_shape(g, *avals)
  transpose = jax.linear_transpose(g, *avals)
  cts = {}
  for m, o in enumerate(outs):
    needed = sorted(program.reach[m])
    if not needed:
      continue

    def pullback(e, m=m, needed=needed):
      ct = transpose([e if i == m else jnp.zeros(oo.shape, oo.dtype) for i, oo in enumerate(outs)])
      return [ct[u] for u in needed]

    per_use = _tree.map_rows(pullback, _tree.basis(o.shape, o.dtype))
    for u, c in zip(needed, per_use):
      cts[(m, u)] = c.reshape((*o.shape, *c.shape[1:]))
  factors = {u: [fac.value(read) for fac in use.structure.factors]
             for u, use in enumerate(program.uses)}
  keys = {u: use.structure.pair.key(read) for u, use in enumerate(program.uses)
          if use.structure.pair is not None}
  return SideResult(cts, factors, keys)


# ---------------------------------------------------------------------------------------------
# Contraction.

class _Namer:
  """Integer einsum subscripts: θ letters shared across sides, local letters per side."""

  def __init__(self):
    self._ids: dict = {}

  def __call__(self, letter, side: int) -> int:
    key = letter if isinstance(letter, ThetaLetter) else (side, letter)
    return self._ids.setdefault(key, len(self._ids))

  def fresh(self) -> int:
    return self._ids.setdefault(object(), len(self._ids))


def _pair_term(res1: SideResult, res2: SideResult, p1: Program, p2: Program, m: int, a: int,
               b: int, roles, batch_axis: int | None):
  """einsum(ct₁, factors₁, [pair], factors₂, ct₂) for use a at x1 and use b at x2."""
  names = _Namer()
  ndim = len(roles)
  out1 = [names.fresh() for _ in range(ndim)]
  out2 = [names.fresh() for _ in range(ndim)]
  s1, s2, out = kernel_subscripts(roles, out1, out2)
  if batch_axis is not None:  # Per-example: batch letters lead every side array.
    bat1, bat2 = [s1[batch_axis]], [s2[batch_axis]]
    s1 = [l for i, l in enumerate(s1) if i != batch_axis]
    s2 = [l for i, l in enumerate(s2) if i != batch_axis]
  else:
    bat1 = bat2 = []
  ua, ub = p1.uses[a], p2.uses[b]
  operands = [res1.cts[(m, a)], bat1 + s1 + [names(l, 1) for l in ua.structure.y_letters]]
  for fac, val in zip(ua.structure.factors, res1.factors[a]):
    operands += [val, bat1 + [names(l, 1) for l in fac.letters]]
  if ua.structure.pair is not None:
    k1, k2 = res1.keys[a], res2.keys[b]
    e = ua.structure.pair.combine(k1.reshape(k1.shape + (1,) * k2.ndim),
                                  k2.reshape((1,) * k1.ndim + k2.shape))
    operands += [e.astype(res1.cts[(m, a)].dtype),
                 bat1 + [names(l, 1) for l in ua.structure.pair.letters]
                 + bat2 + [names(l, 2) for l in ub.structure.pair.letters]]
  for fac, val in zip(ub.structure.factors, res2.factors[b]):
    operands += [val, bat2 + [names(l, 2) for l in fac.letters]]
  operands += [res2.cts[(m, b)], bat2 + s2 + [names(l, 2) for l in ub.structure.y_letters]]
  n_ops = len(operands) // 2
  return jnp.einsum(*operands, out, optimize="optimal" if n_ops <= 6 else "greedy",
                    precision=_tree.HIGHEST)


def _contract(res1, res2, p1, p2, out_leaves, out_leaves2, opts, batch_axes):
  kernels = []
  for m, (o, o2) in enumerate(zip(out_leaves, out_leaves2)):
    roles = opts.roles(len(o.shape))
    total = None
    for a, b in itertools.product(sorted(p1.reach[m]), sorted(p2.reach[m])):
      ua, ub = p1.uses[a], p2.uses[b]
      if ua.leaf != ub.leaf or _pair_status(ua, ub) != "ok":
        continue
      term = _pair_term(res1, res2, p1, p2, m, a, b, roles, batch_axes[m])
      total = term if total is None else total + term
    if total is None:
      total = jnp.zeros(_kernel_shape(o.shape, o2.shape, roles), o.dtype)
    size = trace_size(roles, o.shape)
    kernels.append(total / size if size > 1 else total)
  return kernels


def _kernel_shape(shape1, shape2, roles) -> tuple[int, ...]:
  out = []
  for n1, n2, r in zip(shape1, shape2, roles):
    out += {Role.TRACE: [], Role.DIAG: [n1], Role.PAIR: [n1, n2]}[r]
  return tuple(out)


def kernel(f: Callable, params: PyTree, x1: PyTree, x2: PyTree | None, opts: NTKOptions,
           out_shapes: PyTree) -> PyTree:
  """The NTK by structured derivatives; see `ntk_zoo.ntk_fn` for the arguments' meaning."""
  out_leaves, out_tree = jax.tree_util.tree_flatten(out_shapes)
  store1: list[Program] = []
  store2: list[Program] = []
  if opts.vmap_axes is None:
    res1 = side(f, params, x1, store1)
    res2 = res1 if x2 is None else side(f, params, x2, store2)
    batch_axes = [None] * len(out_leaves)
  else:
    f1, in_axes, batch_axes = _tree.single_example_fn(f, x1, out_shapes, opts)
    ax = _tree.vmap_in_axes(x1, in_axes)
    res1 = jax.vmap(lambda xi: side(f1, params, xi, store1), in_axes=(ax,))(x1)
    res2 = res1 if x2 is None else jax.vmap(lambda xi: side(f1, params, xi, store2),
                                            in_axes=(ax,))(x2)
  p1 = store1[0]
  p2 = store2[0] if store2 else p1
  if len(p1.uses) != len(p2.uses):
    raise AssertionError("Structured derivatives: x1 and x2 traced to different programs.")
  out_leaves2 = out_leaves if x2 is None else jax.tree_util.tree_leaves(
      jax.eval_shape(f, params, x2))
  kernels = _contract(res1, res2, p1, p2, out_leaves, out_leaves2, opts, batch_axes)
  return jax.tree_util.tree_unflatten(out_tree, kernels)


jax.tree_util.register_dataclass(SideResult, data_fields=["cts", "factors", "keys"], meta_fields=[])
