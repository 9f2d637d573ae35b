"""Tests of ntk_zoo.models.haiku_resnet: published parameter counts, registry, inference mode.

The full NTK of haiku_resnet_tiny is checked in test_zoo_ntk.py.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_zoo.models
from ntk_zoo.models import haiku_resnet


def _count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


@pytest.fixture(scope="module")
def tiny():
  return ntk_zoo.models.get("haiku_resnet_tiny", num_classes=10, image_size=32)


# He et al. 2016, Table 1; Haiku's own resnet_test and torchvision agree on these.
@pytest.mark.parametrize("variant, expected", [("50", 25_557_032), ("152", 60_192_808)])
def test_published_parameter_counts(variant, expected):
  params, state = haiku_resnet.param_shapes(variant, num_classes=1000)  # shapes only
  assert _count(params) == expected
  # Haiku's BatchNorm scale/offset are parameters; the state holds only the moving averages.
  assert any(name.endswith("batchnorm") for name in params)
  assert all(name.endswith(("mean_ema", "var_ema")) for name in state)
  assert _count(state) > 0


def test_parameter_count_with_small_head():
  params, _ = haiku_resnet.param_shapes("50", num_classes=10)
  assert _count(params) == 25_557_032 - 2048 * 990 - 990


def test_registered_names():
  names = ntk_zoo.models.list_models()
  for name in ("haiku_resnet50", "haiku_resnet152", "haiku_resnet_tiny"):
    assert name in names


def test_tiny_model_record(tiny):
  assert tiny.name == "haiku_resnet_tiny"
  assert tiny.num_classes == 10
  assert tiny.input_spec.shape == (32, 32, 3)
  assert tiny.input_spec.mean == haiku_resnet.IMAGENET_MEAN
  assert tiny.num_params == _count(haiku_resnet.param_shapes("tiny", 10, 32)[0])
  assert set(tiny.state) == {"params", "state"}


def test_tiny_logits_match_haiku_apply(tiny):
  x = tiny.input_spec.dummy(2)
  logits = jax.jit(tiny.apply)(tiny.params, x)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))
  net = haiku_resnet.transformed("tiny", 10)
  expected, _ = jax.jit(lambda p, s, x: net.apply(p, s, None, x, is_training=False))(
      tiny.params, tiny.state["state"], x)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_fresh_moving_averages(tiny):
  for module_name, bundle in tiny.state["state"].items():
    fill = 1.0 if module_name.endswith("var_ema") else 0.0
    np.testing.assert_array_equal(bundle["average"], fill)
    assert int(bundle["counter"]) == 0


def test_logits_init_not_zero_unless_asked(tiny):
  assert np.any(np.asarray(tiny.params["res_net_tiny/~/logits"]["w"]) != 0)
  p_zero, _ = haiku_resnet.init("tiny", 10, image_size=32, zero_init_logits=True)
  assert np.all(np.asarray(p_zero["res_net_tiny/~/logits"]["w"]) == 0)


def test_seed_reproducible_and_distinct(tiny):
  a = tiny.params  # seed 0
  b, _ = haiku_resnet.init("tiny", 10, seed=0, image_size=32)
  c, _ = haiku_resnet.init("tiny", 10, seed=1, image_size=32)
  w = lambda p: np.asarray(p["res_net_tiny/~/initial_conv"]["w"])
  np.testing.assert_array_equal(w(a), w(b))
  assert not np.array_equal(w(a), w(c))


def test_gradient_reaches_every_parameter(tiny):
  x = tiny.input_spec.dummy(2)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(tiny.apply(p, x) ** 2)))(tiny.params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(tiny.params)
  # Haiku zero-initializes nothing else in basic blocks, so the NTK sees every layer.
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads))


def test_unknown_variant_error():
  with pytest.raises(ValueError, match=r"Unknown Haiku ResNet variant '18'.*'152', '50', 'tiny'"):
    haiku_resnet.transformed("18")


def test_is_haiku_native_class():
  params, _ = haiku_resnet.param_shapes("50", num_classes=10, image_size=64)
  assert "res_net50/~/initial_conv" in params
  reference = hk.transform_with_state(
      lambda x: hk.nets.ResNet50(10)(x, is_training=True))
  ref_params, _ = jax.eval_shape(reference.init, jax.random.PRNGKey(0),
                                 jnp.zeros((1, 64, 64, 3)))
  assert jax.tree.map(lambda s: s.shape, params) == jax.tree.map(lambda s: s.shape, ref_params)


@pytest.mark.slow
def test_resnet50_builds_and_runs():
  model = ntk_zoo.models.get("haiku_resnet50", num_classes=10, image_size=64)
  assert model.num_params == 25_557_032 - 2048 * 990 - 990
  logits = jax.jit(model.apply)(model.params, model.input_spec.dummy(2))
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
