"""Pair-term contraction routes (`ntk_zoo.ntk.structured.pair`)."""

from __future__ import annotations

import numpy as np

from ntk_zoo.ntk.structured import pair


def test_route_under_a_tight_memory_limit_is_pairwise_and_contracts_correctly():
  # Under memory_limit=1 opt_einsum's dp/greedy end this path with one step over all three
  # operands, which jnp.einsum refuses ("simultaneous contraction of 3 or more operands"):
  # ntk-zoo --model resnet18 --image-size 32 --n 6 -i sd hit it.
  shapes = ((2, 7), (2, 2), (2, 2, 7))
  subscripts = ((2, 3), (2, 1), (0, 1, 3))
  pair._route.cache_clear()
  r = pair._route(shapes, subscripts, (), 1)
  assert all(len(step) <= 2 for step in r.path), r
  rng = np.random.default_rng(0)
  ops = tuple(rng.normal(size=s).astype(np.float32) for s in shapes)
  got = pair.contract(pair.Einsum(ops, subscripts, ()), r)
  want = np.einsum("cd,cb,abd->", *ops)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
