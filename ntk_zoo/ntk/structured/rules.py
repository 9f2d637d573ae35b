"""Rule registries, keyed by primitive (like JAX's `ad.primitive_transposes`).

* `VIEW_RULES[prim](view, eqn) -> View | None`: the primitive only re-indexes a parameter
  (reshape, transpose, broadcast, slice, ...); the rule returns the new view, or None when the
  re-indexing cannot be described (then the operand view becomes an identity use).
* `STRUCTURE_RULES[prim](eqn, theta_pos, view) -> Structure | None`: the primitive consumes a
  parameter view as operand `theta_pos`, every other operand being constant w.r.t. θ; the rule
  describes ∂y/∂θ (see `structure.py`), or returns None to decline (identity use instead).
* `IDENTITY_PRIMITIVES`: consumers for which cutting at the parameter view (identity structure,
  cotangent materialized in the view's shape) is the right thing: add, sub, concatenate, ...
  A parameter consumed by any other primitive with no rule takes the same (correct) path and a
  warning names the primitive once.

Rules are registered at the bottom of the rule modules (`rules_views.py`, `rules_linear.py`,
`rules_index.py`), imported by `ntk_zoo.ntk.structured`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from ntk_zoo.ntk import _compat as C
from ntk_zoo.ntk.structured.structure import Structure, View

ViewRule = Callable[[View, C.JaxprEqn], View | None]
StructureRule = Callable[[C.JaxprEqn, int, View], Structure | None]

VIEW_RULES: dict[C.Primitive, ViewRule] = {}
STRUCTURE_RULES: dict[C.Primitive, StructureRule] = {}
IDENTITY_PRIMITIVES: set[C.Primitive] = set()


def defview(prim: C.Primitive, rule: ViewRule) -> None:
  VIEW_RULES[prim] = rule


def defstructure(prim: C.Primitive, rule: StructureRule) -> None:
  STRUCTURE_RULES[prim] = rule


def defidentity(*prims: C.Primitive) -> None:
  IDENTITY_PRIMITIVES.update(prims)


@contextlib.contextmanager
def rules_disabled(*prims: C.Primitive):
  """Temporarily removes the view/structure rules of `prims` (all rules if none given).

  Parameters they consumed then take the unstructured (identity/materialized) path: used by
  the rule unit tests to compare each rule against that path.
  """
  targets = prims or tuple(set(VIEW_RULES) | set(STRUCTURE_RULES))
  saved_views = {p: VIEW_RULES.pop(p) for p in targets if p in VIEW_RULES}
  saved_structures = {p: STRUCTURE_RULES.pop(p) for p in targets if p in STRUCTURE_RULES}
  identity_saved = IDENTITY_PRIMITIVES.copy()
  IDENTITY_PRIMITIVES.update(targets)  # Do not warn about the rules we removed on purpose.
  try:
    yield
  finally:
    VIEW_RULES.update(saved_views)
    STRUCTURE_RULES.update(saved_structures)
    IDENTITY_PRIMITIVES.clear()
    IDENTITY_PRIMITIVES.update(identity_saved)
