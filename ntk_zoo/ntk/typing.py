"""Types shared by the NTK engines: pytrees, axes, and the engine protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # Annotations only: these modules import this one.
  from ntk_zoo.ntk.api import Implementation
  from ntk_zoo.ntk.auto import Decision
  from ntk_zoo.ntk.memory import Plan
  from ntk_zoo.ntk.options import NTKOptions
  from ntk_zoo.ntk.problem import Problem

PyTree = Any
Axes = tuple[int, ...]
ApplyFn = Callable[..., PyTree]  # f(params, x, **kwargs) -> outputs
# `jax.tree_util.PyTreeDef`. jaxlib ships no stub for its C++ pytree module, so mypy sees
# jax's own `PyTreeDef` annotations as an unresolved type (no attributes, no `!=`).
TreeDef = Any


class Engine(Protocol):
  """An NTK implementation: `plan` sizes the computation to a memory budget, `kernel` runs it.

  `plan(problem, budget)` returns a `Plan` (or raises `BudgetError` naming the smallest budget
  that would work) without running anything heavy; `calibration` (from `auto`'s check against
  XLA) maps a plan kind to the factor by which XLA's peak exceeded the estimate. `kernel(problem,
  plan)` computes the kernels, one per output leaf, with the shapes `ntk_fn` documents.
  """
  name: str

  def plan(self, problem: Problem, budget: int,
           calibration: dict[str, float] | None = None) -> Plan: ...

  def kernel(self, problem: Problem, plan: Plan) -> PyTree: ...


class KernelFn(Protocol):
  """What `ntk_fn` returns: `kernel(x1, x2=None, params, **f_kwargs) -> kernels`, with the
  settings it was made with and the decisions taken so far as attributes.
  """
  implementation: Implementation
  options: NTKOptions
  memory_budget: int | None  # Bytes, or None: the default, resolved at the first call.
  decisions: dict[str, Decision]  # Input signature -> the method and plan used for it.
  last_decision: Decision | None  # That of the latest call (None before any).

  def __call__(self, x1: PyTree, x2: PyTree | None = None, params: PyTree = None,
               **f_kwargs: Any) -> PyTree: ...
