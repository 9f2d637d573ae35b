"""Types shared by the NTK engines: pytrees, axes, and the engine protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

PyTree = Any
Axes = tuple[int, ...]
ApplyFn = Callable[..., PyTree]  # f(params, x, **kwargs) -> outputs


class Engine(Protocol):
  """An NTK implementation: `plan` sizes the computation to a memory budget, `kernel` runs it.

  `plan(problem, budget)` returns a `Plan` (or raises `BudgetError` naming the smallest budget
  that would work) without running anything heavy; `kernel(problem, plan)` computes the kernels,
  one per output leaf, with the shapes `ntk_fn` documents.
  """
  name: str

  def plan(self, problem: Any, budget: int) -> Any: ...

  def kernel(self, problem: Any, plan: Any) -> PyTree: ...
