"""`implementation="auto"`: plan every method for the actual program, run the cheapest that fits.

Each engine plans its computation for the given shapes and memory budget (block sizes, and for
structured derivatives the route of every pair term) and estimates FLOPs and bytes written
from the traced program, without compiling (`ntk_zoo.ntk.cost`). `auto` picks the plan with
the smallest `flops + BYTES_WEIGHT * bytes` among those that fit the budget. Decisions are
cached per input signature and budget, recorded as `Decision`s (also logged at INFO level on
logger `ntk_zoo.ntk.auto`).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np

from ntk_zoo.ntk.cost import BYTES_WEIGHT, Estimate
from ntk_zoo.ntk.memory import BudgetError, Plan, fmt_bytes
from ntk_zoo.ntk.problem import Problem
from ntk_zoo.ntk.typing import Engine

log = logging.getLogger(__name__)

__all__ = ["BYTES_WEIGHT", "Decision", "Estimate", "choose", "signature"]


@dataclasses.dataclass(frozen=True)
class Decision:
  """What was run for one input signature, and why.

  Attributes:
    signature: shapes/dtypes of the inputs and params, options and budget.
    chosen: the implementation run.
    plan: its plan (blocking, estimated FLOPs and peak memory).
    estimates: per implementation considered, its FLOPs and bytes written (fitting plans).
    plans: per implementation considered, its plan, or the reason it does not fit.
  """
  signature: str
  chosen: str
  plan: Plan
  estimates: dict[str, Estimate]
  plans: dict[str, Plan | str] = dataclasses.field(default_factory=dict)

  def __str__(self) -> str:
    rows = ", ".join(f"{k}: {v.flops:.3g} FLOPs + {v.bytes:.3g} B"
                     for k, v in self.estimates.items())
    return f"{self.chosen} for {self.signature}: {self.plan} ({rows})"


def signature(problem: Problem, budget: int) -> str:
  def sig(t):
    return jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a: f"{np.dtype(a.dtype).name}{list(np.shape(a))}", t))
  return repr((sig(problem.x1), None if problem.x2 is None else sig(problem.x2),
               sig(problem.params), problem.opts, fmt_bytes(budget)))


# Plans whose estimated peak is above this fraction of the budget are checked against XLA's
# own buffer assignment (one extra compile of the kernel alone) before they run.
VERIFY_FRACTION = 0.3
MAX_REPLANS = 3


def choose(problem: Problem, budget: int, engines: dict[str, Engine],
           verify: bool = False) -> Decision:
  """Plans every engine and picks the cheapest plan that fits `budget`.

  With `verify`, a plan estimated to use more than `VERIFY_FRACTION` of the budget is compiled
  on its own and XLA's memory analysis (temporaries + arguments + outputs) is compared with
  the budget; if XLA needs more, the plans are redone for a budget scaled down by the
  overshoot (up to `MAX_REPLANS` times).
  """
  if not verify:
    return _choose(problem, budget, {}, engines)
  try:
    return _verified(problem, budget, engines)
  except BudgetError as e:
    raise _checked_budget_error(problem, engines, e) from None


def _verified(problem: Problem, budget: int, engines: dict[str, Engine]) -> Decision:
  """`_choose`, with plans near the budget checked against XLA's count and redone."""
  calibration: dict[str, dict[str, float]] = {}
  decision = _choose(problem, budget, calibration, engines)
  for _ in range(MAX_REPLANS):
    if decision.plan.peak_bytes <= VERIFY_FRACTION * budget:
      break
    measured = compiled_peak(problem, engines[decision.chosen], decision.plan)
    if measured is None:
      break
    plan = dataclasses.replace(decision.plan, measured_bytes=measured)
    decision = dataclasses.replace(decision, plan=plan)
    if measured <= budget:
      break
    log.info("%s: XLA needs %s for a plan estimated at %s; replanning.", decision.chosen,
             fmt_bytes(measured), fmt_bytes(decision.plan.peak_bytes))
    factors = calibration.setdefault(decision.chosen, {})
    kind = decision.plan.kind
    parts = dict(decision.plan.parts)
    if kind == "split" and "split_extra" not in factors and "blocks" in parts:
      # The blocked phase overshoots by a roughly constant amount (buffers XLA cannot pack
      # tightly around the held frontier and stash): add it to that phase's estimate, which
      # keeps the split (no recomputation) with smaller blocks where one fits.
      factors["split_extra"] = max(0.0, 1.03 * measured - parts["blocks"])
    else:
      factors[kind] = factors.get(kind, 1.0) * measured / decision.plan.peak_bytes * 1.05
    decision = _choose(problem, budget, calibration, engines)
  return decision


def _checked_budget_error(problem: Problem, engines: dict[str, Engine],
                          error: BudgetError) -> BudgetError:
  """`error`, with the budget it names checked against XLA: the smallest plan is made for
  that budget and compiled; if XLA needs more (fixed overheads the estimates leave out weigh
  most on small problems), the budget named is raised until a plan fits XLA's count."""
  needed = error.needed
  for _ in range(MAX_REPLANS + 1):
    try:
      decision = _verified(problem, needed, engines)
    except BudgetError as e:
      needed = max(int(needed * 1.25), e.needed)
      continue
    measured = decision.plan.measured_bytes
    if measured is None or measured <= needed:
      break
    needed = int(measured * 1.05)
  if needed == error.needed:
    return error
  msg = str(error).replace(fmt_bytes(error.needed), fmt_bytes(needed))
  return BudgetError(msg, needed)


def compiled_peak(problem: Problem, engine: Engine, plan: Plan) -> int | None:
  """XLA's peak for the kernel alone under `plan` (None if it cannot be compiled apart)."""
  abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                                    (problem.params, problem.x1, problem.x2))

  def run(p, a, b):
    return engine.kernel(dataclasses.replace(problem, params=p, x1=a, x2=b), plan)

  try:
    compiled = jax.jit(run).lower(*abstract).compile()
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (e.g. f closes over outer tracers)
    log.debug("compiled_peak: could not compile the kernel apart", exc_info=True)
    return None
  if ma is None:
    return None
  return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
             - ma.alias_size_in_bytes)


def _choose(problem: Problem, budget: int, calibration: dict[str, dict[str, float]],
            engines: dict[str, Engine]) -> Decision:
  plans: dict[str, Plan | str] = {}
  errors: dict[str, BudgetError] = {}
  for name, engine in engines.items():
    try:
      plans[name] = engine.plan(problem, budget, calibration.get(name))
    except BudgetError as e:
      plans[name] = str(e)
      errors[name] = e
  fitting = {k: p for k, p in plans.items() if isinstance(p, Plan)}
  if not fitting:
    needed = min(e.needed for e in errors.values())
    raise BudgetError(
        f"No implementation fits the memory budget of {fmt_bytes(budget)}; the smallest plan "
        f"needs about {fmt_bytes(needed)}. Pass memory_budget >= {fmt_bytes(needed)} or "
        "fewer examples per call.\n" + "\n".join(f"  {k}: {v}" for k, v in plans.items()),
        needed)
  estimates = {k: Estimate(p.flops, p.bytes_written) for k, p in fitting.items()}
  chosen = min(estimates, key=lambda k: estimates[k].cost)
  decision = Decision(signature(problem, budget), chosen, fitting[chosen], estimates, plans)
  log.info("auto chose %s", decision)
  return decision
