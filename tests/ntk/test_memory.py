"""Memory budgets: blocked kernels equal unblocked ones, budgets are respected, too-small
budgets fail early with the budget that would work.

Blocking is exercised two ways: through `ntk_fn(memory_budget=...)` (what users do), and by
handing the engines explicit plans (every blocking shape the planner can produce: uniform
blocks of output directions, and split sweeps at several positions), each checked against
the brute-force `reference_ntk`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ntk_zoo
from ntk_zoo.ntk import memory
from ntk_zoo.ntk.memory import BudgetError, Plan
from ntk_zoo.ntk.options import NTKOptions, VmapAxes
from ntk_zoo.ntk.problem import Problem
from ntk_zoo.ntk.structured import engine as sweep_engine
from ntk_zoo.ntk.structured import planning
from ntk_zoo.ntk.structured.blocking import Blocks
from ntk_zoo.testing import assert_ntk_close, reference_ntk

O = 12


def cnn(p, x):
  """Conv-ReLU-maxpool-conv with a residual, then a dense head with O outputs."""
  dn = ("NHWC", "HWIO", "NHWC")
  h = lax.conv_general_dilated(x, p["w1"], (1, 1), "SAME", dimension_numbers=dn) + p["b1"]
  h = jax.nn.relu(h)
  h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                        ((0, 0), (1, 1), (1, 1), (0, 0)))
  h = h + jax.nn.relu(lax.conv_general_dilated(h, p["w2"], (1, 1), "SAME",
                                               dimension_numbers=dn)) * p["s2"]
  return h.reshape(h.shape[0], -1) @ p["d"]


@functools.cache
def case():
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  p = {"w1": jax.random.normal(k[0], (3, 3, 3, 6)) / 4, "b1": jax.random.normal(k[1], (6,)),
       "w2": jax.random.normal(k[2], (3, 3, 6, 6)) / 7, "s2": 1 + jax.random.normal(k[3], (6,)),
       "d": jax.random.normal(k[4], (96, O)) / 10}
  x = jax.random.normal(k[5], (3, 8, 8, 3))
  x = x.at[0, :3].set(-1.0)  # Ties in the max-pool after the ReLU.
  return p, x, x[:2] * 1.3


SETTINGS = {
    "full-vmap-x2": ((), (), 0, True),
    "full-vmap-sym": ((), (), 0, False),
    "full-novmap-x2": ((), (), None, True),
    "trace-vmap-x2": ((-1,), (), 0, True),
    "diag-vmap-sym": ((), (0,), 0, False),
}


def _problem(setting):
  trace, diag, vmap, given = SETTINGS[setting]
  p, x1, x2 = case()
  x2 = x2 if given else None
  if diag and given:
    x2 = x1 * 1.3
  opts = NTKOptions(trace, diag, None if vmap is None else VmapAxes(vmap, vmap))
  out = jax.eval_shape(cnn, p, x1)
  out2 = out if x2 is None else jax.eval_shape(cnn, p, x2)
  return Problem(cnn, p, x1, x2, opts, out, out2)


@functools.cache
def _reference(setting):
  trace, diag, _, _ = SETTINGS[setting]
  prob = _problem(setting)
  return reference_ntk(cnn, prob.x1, prob.x2, prob.params, trace_axes=trace,
                       diagonal_axes=diag)


def _run(engine, prob: Problem, plan: Plan):
  return jax.jit(lambda p: engine.kernel(dataclasses.replace(prob, params=p), plan))(prob.params)


def _sweep_plans(engine, prob, thorough: bool):
  """Every blocking shape: unblocked, uniform blocks of 5 and 2, and split sweeps (at about
  four cuts when `thorough`, else at one: blocks of 5 split at a middle cut)."""
  prep = engine.prepare(prob)
  leaf = prep.leaves[0]
  size = leaf.shapes[0][leaf.block_axis]
  plans = [(leaf.block_axis, size, 1, 0), (leaf.block_axis, 5, 3, 0),
           (leaf.block_axis, 2, 6, 0)]
  whole = planning._estimate(  # pylint: disable=protected-access
      prep, prob, 0, Blocks(leaf.block_axis, size, 1), 10 ** 9)
  cuts = [t for t, _ in whole.probe.cuts if 0 < t < len(prep.lp.program.g_eqns)]
  if leaf.block_role() is ntk_zoo.ntk.options.Role.PAIR:
    if thorough:
      for t in cuts[:: max(1, len(cuts) // 4)]:
        plans += [(leaf.block_axis, 5, 3, t), (leaf.block_axis, size, 1, t)]
    elif cuts:
      plans = plans[:2] + [(leaf.block_axis, 5, 3, cuts[len(cuts) // 2])]
  return [Plan(engine.name, (b,), 0, 0, 0, 10 ** 9) for b in plans]


@pytest.mark.parametrize("thorough", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["some-plans", "all-plans"])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("engine", [sweep_engine.STRUCTURED, sweep_engine.JACOBIAN],
                         ids=lambda e: e.name)
def test_every_blocking_equals_reference(engine, setting, thorough):
  prob = _problem(setting)
  ref = _reference(setting)
  plans = _sweep_plans(engine, prob, thorough)
  assert any(pl.blocks[0][3] for pl in plans) or SETTINGS[setting][:2] != ((), ())
  for plan in plans:
    k = _run(engine, prob, plan)
    try:
      assert_ntk_close(np.asarray(k), ref)
    except AssertionError as e:
      raise AssertionError(f"{engine.name} {setting} blocks={plan.blocks}: {e}") from None


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_vector_products_chunks_equal_reference(chunk):
  from ntk_zoo.ntk import ntk_vp  # pylint: disable=g-import-not-at-top
  prob = _problem("full-vmap-x2")
  k = _run(ntk_vp.ENGINE, prob, Plan(ntk_vp.ENGINE.name, ((chunk,),), 0, 0, 0, 10 ** 9))
  assert_ntk_close(np.asarray(jax.tree_util.tree_leaves(k)[0]), _reference("full-vmap-x2"))


@pytest.mark.parametrize("implementation", [
    "structured_derivatives", pytest.param("jacobian_contraction", marks=pytest.mark.slow),
    pytest.param("ntk_vector_products", marks=pytest.mark.slow)])
def test_small_budget_blocks_and_is_respected(implementation):
  """A budget below the unblocked plan's peak: the planner blocks, XLA's peak fits."""
  p, x1, x2 = case()
  big = ntk_zoo.ntk_fn(cnn, implementation=implementation, trace_axes=(), vmap_axes=0,
                       memory_budget="8GB")
  jax.eval_shape(lambda a, b, q: big(a, b, q), x1, x2, p)
  unblocked = big.last_decision.plan
  fixed = 3 * 2 * (int(np.prod(jax.eval_shape(cnn, p, x1).shape)) ** 2) * 4

  def blocked(plan):
    b = plan.blocks[0]
    return b[2] > 1 or b[3] > 0 if len(b) == 4 else b[0] < O * 3

  # Below the unblocked plan's peak the planner may first fit by cheaper-in-memory pair-term
  # routes; shrink the budget until it has to block.
  frac, plan = 0.9, None
  while frac > 0.2:
    budget = int(fixed + frac * (unblocked.peak_bytes - fixed))
    kernel = ntk_zoo.ntk_fn(cnn, implementation=implementation, trace_axes=(), vmap_axes=0,
                            memory_budget=budget)
    fn = jax.jit(lambda a, b, q: kernel(a, b, q))
    compiled = fn.lower(x1, x2, p).compile()
    plan = kernel.last_decision.plan
    if blocked(plan):
      break
    assert plan.peak_bytes < unblocked.peak_bytes, (plan, unblocked)
    frac *= 0.75
  assert blocked(plan), plan
  assert plan.peak_bytes <= budget, plan
  ma = compiled.memory_analysis()
  assert ma.temp_size_in_bytes + ma.output_size_in_bytes <= budget, (ma, plan)
  assert_ntk_close(np.asarray(fn(x1, x2, p)), reference_ntk(cnn, x1, x2, p, trace_axes=()))


# The error's budget is checked against XLA's count (a few compiles): auto and JC are slow.
@pytest.mark.parametrize("implementation", [
    pytest.param("auto", marks=pytest.mark.slow), "structured_derivatives",
    pytest.param("jacobian_contraction", marks=pytest.mark.slow), "ntk_vector_products"])
def test_too_small_budget_names_the_budget_that_works(implementation):
  p, x1, x2 = case()
  kernel = ntk_zoo.ntk_fn(cnn, implementation=implementation, trace_axes=(), vmap_axes=0,
                          memory_budget="10KB")
  with pytest.raises(BudgetError, match=r"memory_budget >= [0-9.]+ [KMG]?B") as info:
    jax.eval_shape(lambda a, b, q: kernel(a, b, q), x1, x2, p)
  needed = info.value.needed
  assert needed > 10_000
  ok = ntk_zoo.ntk_fn(cnn, implementation=implementation, trace_axes=(), vmap_axes=0,
                      memory_budget=int(needed * 1.5))
  k = jax.jit(lambda a, b, q: ok(a, b, q))(x1, x2, p)
  assert_ntk_close(np.asarray(k), reference_ntk(cnn, x1, x2, p, trace_axes=()))


def test_decisions_record_the_plan():
  p, x1, _ = case()
  kernel = ntk_zoo.ntk_fn(cnn, trace_axes=(), vmap_axes=0, memory_budget="2GB")
  jax.jit(lambda a, q: kernel(a, None, q))(x1, p)
  (decision,) = kernel.decisions.values()
  assert decision.chosen in decision.estimates
  assert decision.plan.method == decision.chosen
  assert decision.plan.budget == 2 * 10 ** 9
  assert 0 < decision.plan.peak_bytes <= 2 * 10 ** 9
  assert decision.plan.flops > 0
  assert set(decision.plans) == {"jacobian_contraction", "ntk_vector_products",
                                 "structured_derivatives"}
  assert "FLOPs" in str(decision)


@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * 10 ** 9), ("8 GiB", 8 * 2 ** 30), ("512MB", 512 * 10 ** 6), ("1.5e9", 1.5e9),
    (3_000_000, 3_000_000), (None, None)])
def test_parse_budget(text, expected):
  assert memory.parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["eight gigs", "-1GB", 0, "8 parsecs", True])
def test_parse_budget_rejects(bad):
  with pytest.raises((ValueError, TypeError), match="memory_budget"):
    memory.parse_budget(bad)


def test_ntk_fn_rejects_bad_budget_at_creation():
  with pytest.raises(ValueError, match="not a size"):
    ntk_zoo.ntk_fn(cnn, memory_budget="lots")


def test_default_budget_is_a_fraction_of_free_memory():
  budget = memory.default_budget()
  assert 0 < budget <= memory._available_host_bytes()  # pylint: disable=protected-access


@pytest.mark.parametrize("size, b_max, expected", [
    (1000, 167, (8, 125)),   # 6 blocks of 167 would pad to 1002 rows: 8 of 125 divide 1000.
    (1000, 500, (2, 500)), (1000, 1000, (1, 1000)), (12, 5, (3, 4)),
    (13, 5, (3, 5)),         # 13 is prime: no exact division within 2x the fewest blocks.
    (7, 1, (7, 1))])
def test_split_blocks_divide_the_rows_when_they_can(size, b_max, expected):
  n, b = planning._split_blocks(size, b_max)  # pylint: disable=protected-access
  assert (n, b) == expected
  assert b <= b_max and n * b >= size
