"""The linear program of structured derivatives: traced once, analyzed once.

`trace_program(f1, params, example)` linearizes `f1` in θ at an *abstract* example, flattens the
linear jaxpr (`flatten.py`) and finds every use of every parameter (`analyze`). It also finds
which of the program's constants (the linearization's residuals) depend on the example: those
are computed per example (`LinearProgram.constants`, vmapped), the others once.

A *use* of a parameter leaf θ is where the program is cut (`Site`):

* `EQN`: the output y of an equation y = prim(view(θ), c…) that has a structure rule;
* `OPERAND`: a view of θ consumed by a primitive without a rule (identity structure);
* `OUTPUT`: a view of θ returned as an output;
* `INVAR`: the leaf itself (its Jacobian is materialized: leaves whose uses see it in
  incompatible coordinates, or every leaf for Jacobian contraction).

The rest of the program, g(y¹…yᴷ), is linear in the uses' values; the sweep (`sweep.py`)
transposes it one equation at a time.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from ntk_zoo.ntk import _compat as C
# The rule modules register their rules on import; importing them here guarantees they are
# registered whichever module of the package a user imports first.
from ntk_zoo.ntk.structured import rules_index, rules_linear, rules_views  # noqa: F401  pylint: disable=unused-import
from ntk_zoo.ntk.structured.flatten import flatten
from ntk_zoo.ntk.structured.rules import IDENTITY_PRIMITIVES, STRUCTURE_RULES, VIEW_RULES
from ntk_zoo.ntk.structured.rules_views import base_view
from ntk_zoo.ntk.structured.structure import Structure, View, identity, windows_disjoint
from ntk_zoo.ntk.typing import PyTree

log = logging.getLogger(__name__)

_WARNED: set[str] = set()


class UnstructuredPrimitiveWarning(UserWarning):
  """A parameter is consumed by a primitive with no structure rule (correct but slower)."""


def _warn_once(eqn: C.JaxprEqn) -> None:
  import warnings  # pylint: disable=g-import-not-at-top
  prim_name = str(eqn.primitive)
  if eqn.primitive is C.prims.custom_lin_p:  # A jax.custom_vjp whose bwd is not transposable.
    prim_name = f"custom_vjp bwd {C.custom_lin_name(eqn.params)}"
    message = (
        f"Structured derivatives: a parameter goes through a jax.custom_vjp function (bwd rule "
        f"'{C.custom_lin_name(eqn.params)}') whose bwd is not linear in its cotangents, so its "
        "structure cannot be read off; its Jacobian is materialized through bwd instead (correct, "
        "but slower and larger). A bwd linear in its cotangents (or jax.custom_jvp) takes the "
        "structured path.")
  else:
    message = (
        f"Structured derivatives: no structure rule for primitive '{prim_name}' consuming a "
        "parameter; its Jacobian is materialized instead (correct, but slower and larger). "
        "Register a rule with ntk_zoo.ntk.structured.rules.defstructure to speed it up.")
  if prim_name in _WARNED:
    return
  _WARNED.add(prim_name)
  warnings.warn(message, UnstructuredPrimitiveWarning, stacklevel=5)


class SiteKind(str, enum.Enum):
  EQN = "eqn"
  OPERAND = "operand"
  OUTPUT = "output"
  INVAR = "invar"


class Site(NamedTuple):
  """Where the program is cut for one use. `index`: equation, output or leaf number."""
  kind: SiteKind
  index: int  # type: ignore[assignment]  # Shadows tuple.index: legal, mypy rejects it.
  operand: int = -1


class PairStatus(enum.Enum):
  SKIP = "skip"  # Disjoint slices of a stacked parameter: no contribution.
  OK = "ok"  # Structured contraction.
  JACOBIAN = "jacobian"  # Incompatible coordinates: materialize the leaf's Jacobian.


@dataclasses.dataclass(frozen=True)
class Use:
  """One use of a parameter leaf: its view, the structure of ∂y/∂θ, and its cut site."""
  leaf: int
  view: View
  structure: Structure
  site: Site


def pair_status(a: Use, b: Use) -> PairStatus:
  if windows_disjoint(a.view.window, b.view.window):
    return PairStatus.SKIP
  if (a.view.window == b.view.window and a.view.theta_letters() == b.view.theta_letters()
      and (a.structure.pair is None) == (b.structure.pair is None)):
    return PairStatus.OK
  return PairStatus.JACOBIAN


@dataclasses.dataclass
class Program:
  """A flat linear jaxpr (invars: constants, then one tangent per parameter leaf) and its uses."""
  jaxpr: C.Jaxpr
  consts: list  # Values of `jaxpr.constvars` (concrete).
  n_consts: int
  uses: list[Use]
  const_eqns: list[int]  # Equations that depend on constants only.
  g_eqns: list[int]  # Equations of g (including cut equations, which read their use's value).
  cut_at: dict[Site, int]  # site -> use index
  reach: list[frozenset[int]]  # Per output: the uses it depends on.

  def cut_var(self, u: Use):
    s = u.site
    if s.kind is SiteKind.EQN:
      return self.jaxpr.eqns[s.index].outvars[0]
    if s.kind is SiteKind.OPERAND:
      return self.jaxpr.eqns[s.index].invars[s.operand]
    if s.kind is SiteKind.OUTPUT:
      return self.jaxpr.outvars[s.index]
    return self.jaxpr.invars[self.n_consts + u.leaf]

  def cut_aval(self, u: Use):
    return self.cut_var(u).aval

  def groups(self, m: int) -> list[tuple[int, ...]]:
    """Uses reaching output m, grouped so that only uses within a group pair up.

    A group is a connected component of the "pairs with" relation (same leaf, overlapping
    window): usually one use; all uses of a shared weight; disjoint slices of a stacked
    parameter (scanned layers) are separate groups.
    """
    reach = sorted(self.reach[m])
    parent = {u: u for u in reach}

    def find(u):
      while parent[u] != u:
        u = parent[u]
      return u

    for a, b in itertools.combinations(reach, 2):
      ua, ub = self.uses[a], self.uses[b]
      if ua.leaf == ub.leaf and pair_status(ua, ub) is PairStatus.OK:
        parent[find(a)] = find(b)
    out: dict[int, list[int]] = {}
    for u in reach:
      out.setdefault(find(u), []).append(u)
    return [tuple(g) for g in out.values()]


def analyze(closed: C.ClosedJaxpr, n_consts: int, jacobian_leaves: frozenset[int]) -> Program:
  """Finds the uses of each parameter leaf in a flat linear jaxpr (see the module docstring)."""
  jaxpr = closed.jaxpr
  theta = jaxpr.invars[n_consts:]
  dep = set(theta)
  views: dict = {}
  uses: list[Use] = []
  cut_at: dict[Site, int] = {}
  const_eqns, g_eqns = [], []

  def add_use(leaf, view, structure, site):
    cut_at[site] = len(uses)
    uses.append(Use(leaf, view, structure, site))

  for leaf, v in enumerate(theta):
    view = base_view(leaf, tuple(v.aval.shape))
    if leaf in jacobian_leaves:
      add_use(leaf, view, identity(view), Site(SiteKind.INVAR, leaf))
    else:
      views[v] = view

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
      structure_rule = STRUCTURE_RULES.get(eqn.primitive)
      structure = structure_rule(eqn, tpos[0], view) if structure_rule else None
      if structure is not None:
        add_use(view.leaf, view, structure, Site(SiteKind.EQN, k))
        g_eqns.append(k)
        continue
    for i in tpos:
      operand_view = views.get(eqn.invars[i])
      if operand_view is not None:
        add_use(operand_view.leaf, operand_view, identity(operand_view),
                Site(SiteKind.OPERAND, k, i))
        if eqn.primitive not in IDENTITY_PRIMITIVES:
          _warn_once(eqn)
    g_eqns.append(k)

  for j, v in enumerate(jaxpr.outvars):
    if not C.is_literal(v) and v in views:
      view = views[v]
      add_use(view.leaf, view, identity(view), Site(SiteKind.OUTPUT, j))

  reach = _reach(jaxpr, n_consts, g_eqns, cut_at)
  return Program(jaxpr, list(closed.consts), n_consts, uses, const_eqns, g_eqns, cut_at, reach)


def _reach(jaxpr, n_consts, g_eqns, cut_at) -> list[frozenset[int]]:
  """For each output, the set of uses whose cut value it depends on."""
  r: dict = {}
  for site, u in cut_at.items():
    if site.kind is SiteKind.INVAR:
      r[jaxpr.invars[n_consts + site.index]] = frozenset({u})
  for k in g_eqns:
    eqn = jaxpr.eqns[k]
    if Site(SiteKind.EQN, k) in cut_at:
      r[eqn.outvars[0]] = frozenset({cut_at[Site(SiteKind.EQN, k)]})
      continue
    s: frozenset[int] = frozenset()
    for i, v in enumerate(eqn.invars):
      site = Site(SiteKind.OPERAND, k, i)
      if site in cut_at:
        s |= {cut_at[site]}
      elif not C.is_literal(v):
        s |= r.get(v, frozenset())
    for v in eqn.outvars:
      r[v] = s
  out = []
  for j, v in enumerate(jaxpr.outvars):
    site = Site(SiteKind.OUTPUT, j)
    if site in cut_at:
      out.append(frozenset({cut_at[site]}))
    else:
      out.append(frozenset() if C.is_literal(v) else r.get(v, frozenset()))
  return out


def build_program(closed: C.ClosedJaxpr, n_consts: int, materialize: bool = False) -> Program:
  """Analyzes a flat linear jaxpr; leaves with incompatible uses fall back to their Jacobian.

  Args:
    closed: flat closed jaxpr, invars = `n_consts` constants then one tangent per leaf.
    n_consts: number of constant invars.
    materialize: cut every leaf at its tangent (Jacobian contraction: no structure used).
  """
  n_leaves = len(closed.jaxpr.invars) - n_consts
  if materialize:
    return analyze(closed, n_consts, frozenset(range(n_leaves)))
  program = analyze(closed, n_consts, frozenset())
  by_leaf: dict[int, list[Use]] = {}
  for u in program.uses:
    by_leaf.setdefault(u.leaf, []).append(u)
  fallback = frozenset(
      leaf for leaf, us in by_leaf.items()
      if any(pair_status(a, b) is PairStatus.JACOBIAN for a, b in itertools.product(us, us)))
  if fallback:
    log.info("Structured derivatives: leaves %s use incompatible views; materializing their "
             "Jacobians.", sorted(fallback))
    program = analyze(closed, n_consts, fallback)
  return program


# ---------------------------------------------------------------------------------------------
# Tracing: the program once (abstract example), the constants per example (vmapped).

def linearized_jaxpr(f1: Callable, params: PyTree, xi: PyTree) -> C.ClosedJaxpr:
  """The jaxpr of θ ↦ ∂f1(θ, xi)/∂θ · θ (its consts are the linearization's residuals)."""
  theta, tree = jax.tree_util.tree_flatten(params)
  _, f_lin = jax.linearize(lambda *t: f1(jax.tree_util.tree_unflatten(tree, t), xi), *theta)
  return jax.make_jaxpr(f_lin)(*theta)


@dataclasses.dataclass(frozen=True)
class LinearProgram:
  """The analyzed program of f1 and how to compute its constants for a batch of examples.

  Attributes:
    program: the flat, analyzed linear jaxpr.
    batched: per constant invar, whether it depends on the example (else computed once).
  """
  program: Program
  batched: tuple[bool, ...]
  f1: Callable

  def constants(self, params: PyTree, x: PyTree, in_axes: PyTree) -> list:
    """The program's constant inputs for each example of `x` (batched ones stacked on axis 0)."""
    out_axes = [0 if b else None for b in self.batched]
    consts = jax.vmap(lambda xi: linearized_jaxpr(self.f1, params, xi).consts,
                      in_axes=(in_axes,), out_axes=out_axes)(x)
    if len(consts) != len(self.batched):
      raise AssertionError(
          f"Structured derivatives: the linearization traced to {len(consts)} constants under "
          f"vmap but {len(self.batched)} when analyzed; please report this with your model.")
    return list(consts)


def trace_program(f1: Callable, params: PyTree, example: PyTree, *,
                  materialize: bool = False) -> LinearProgram:
  """Traces and analyzes the linear program of `f1(params, xi)` at an abstract example.

  Args:
    f1: per-example function `f1(params, xi)`.
    params: parameters (arrays or ShapeDtypeStructs).
    example: one example (arrays or ShapeDtypeStructs).
    materialize: cut every leaf at its tangent (Jacobian contraction).
  """
  program: Program | None = None

  def consts_of(p, xi):
    # Traced once by `make_jaxpr`, on abstract values: the program is analyzed where the
    # linear jaxpr exists, and the traced consts show which depend on the example.
    nonlocal program
    closed = linearized_jaxpr(f1, p, xi)
    if program is None:
      program = build_program(flatten(closed), len(closed.consts), materialize)
    return closed.consts

  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), (params, example))
  outer = jax.make_jaxpr(consts_of)(*abstract)
  assert program is not None  # Set by the trace of `consts_of` above.
  n_params = len(jax.tree_util.tree_leaves(params))
  batched = _depends_on(outer.jaxpr, set(outer.jaxpr.invars[n_params:]))
  return LinearProgram(program, tuple(batched), f1)


def _depends_on(jaxpr: C.Jaxpr, sources: set) -> list[bool]:
  """For each output of `jaxpr`, whether it depends on any of the `sources` invars."""
  dep = set(sources)
  for eqn in jaxpr.eqns:
    if any(not C.is_literal(v) and v in dep for v in eqn.invars):
      dep.update(eqn.outvars)
  return [not C.is_literal(v) and v in dep for v in jaxpr.outvars]

