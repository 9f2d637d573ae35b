"""Tests of ntk_zoo.models.wide_resnet: sizes, forward shapes, no BatchNorm in the NTK WRN, parity.

The parity references are independent forwards written here with torch.nn.functional, reading
our parameter trees (OIHW = our HWIO kernels transposed).
The full NTKs of wrn_tiny and wrn_ntk_tiny are checked in test_zoo_ntk.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ntk_zoo.models
from ntk_zoo.models import common, wide_resnet
from ntk_zoo.models.convert import checkpoints
from ntk_zoo.testing import max_normalized_error as rel_err


def count(variables) -> int:
  return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(variables))


def t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32))


def oihw(kernel) -> torch.Tensor:
  return t(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))


@pytest.fixture(scope="module")
def zk_tiny():
  return ntk_zoo.models.get("wrn_tiny")


@pytest.fixture(scope="module")
def ntk_tiny():
  return ntk_zoo.models.get("wrn_ntk_tiny")


# ---------------------------------------------------------------------------------------------
# Sizes and shapes.


@pytest.mark.parametrize("name", ["wrn16_8", "wrn28_10", "wrn40_4"])
def test_zk_parameter_counts_match_the_paper(name):
  v = wide_resnet.VARIANTS[name]
  params = common.abstract_variables(wide_resnet.WideResNet(depth=v.depth, k=v.k))["params"]
  assert round(count(params) / 1e6, 1) == v.published_params


def test_wrn28_10_exact_parameter_count():
  # 36,479,194: the count torch ports of the authors' code report for CIFAR-10.
  module = wide_resnet.WideResNet(depth=28, k=10, num_classes=10)
  assert count(common.abstract_variables(module)["params"]) == 36_479_194


def test_ntk_wrn_parameter_count_by_hand():
  # WRN-NTK-10-1 (block_size 1): stem 3*16*9; per group g the 2 block convs + 3x3 shortcut conv.
  module = wide_resnet.WideResNetNTK(block_size=1, k=1, num_classes=10)
  expected = 3 * 16 * 9
  cin = 16
  for w in (16, 32, 64):
    expected += cin * w * 9 + w * w * 9 + cin * w * 9
    cin = w
  expected += 64 * 10 + 10
  assert count(common.abstract_variables(module)) == expected


@pytest.mark.parametrize("name", ["wrn28_10", "wrn_ntk28_10", "wrn_ntk28_1", "wrn16_8"])
def test_big_variants_output_shapes(name):
  table = {**wide_resnet.VARIANTS, **wide_resnet.NTK_VARIANTS}
  v = table[name]
  module = (wide_resnet.WideResNetNTK(block_size=v.block_size, k=v.k) if "ntk" in name
            else wide_resnet.WideResNet(depth=v.depth, k=v.k))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = common.abstract_variables(module)
  assert jax.eval_shape(module.apply, variables, x).shape == (2, 10)


@pytest.mark.parametrize("fixture", ["zk_tiny", "ntk_tiny"])
def test_tiny_forward_shapes(request, fixture):
  model = request.getfixturevalue(fixture)
  x = model.input_spec.dummy(3)
  assert x.shape == (3, 8, 8, 3)
  y = model.apply(model.params, x)
  assert y.shape == (3, 10) and np.all(np.isfinite(y)) and np.std(y) > 0
  assert model.num_params == count(model.params)


def test_image_size_is_settable():
  module = wide_resnet.WideResNet(depth=10, k=1, num_classes=4)
  variables = common.abstract_variables(module, image_size=40)
  x = jax.ShapeDtypeStruct((1, 40, 40, 3), jnp.float32)
  assert jax.eval_shape(module.apply, variables, x).shape == (1, 4)


def test_ntk_wrn_has_no_batchnorm(ntk_tiny):
  assert ntk_tiny.state == {} and set(ntk_tiny.params) == {"params"}
  keys = checkpoints.flatten(ntk_tiny.params["params"])
  assert all(k.endswith(("conv/kernel", "head/kernel", "head/bias")) for k in keys), keys
  # Without normalization, each example's logits do not depend on the batch and scale with
  # the input (positively homogeneous network, head bias has b_std = 0).
  x = ntk_tiny.input_spec.dummy(2)
  y = ntk_tiny.apply(ntk_tiny.params, x)
  y2 = ntk_tiny.apply(ntk_tiny.params, x.at[1].multiply(3.0))
  np.testing.assert_allclose(y2[0], y[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y2[1], 3 * y[1], rtol=1e-4, atol=1e-5)


def test_zk_wrn_has_batchnorm_in_state(zk_tiny):
  assert set(zk_tiny.params) == {"params"} and set(zk_tiny.state) == {"batch_stats"}
  assert "scale" in zk_tiny.params["params"]["bn"]
  assert "var" in zk_tiny.state["batch_stats"]["bn"]


def test_ntk_shortcuts_follow_neural_tangents(ntk_tiny):
  # Every group's first block projects, even group 1 at k=1 where the shape does not change.
  params = ntk_tiny.params["params"]
  assert {g for g in params if "shortcut" in params[g]} == {
      "group1_0", "group2_0", "group3_0"}
  module = wide_resnet.WideResNetNTK(block_size=2, k=1, always_project_first=False)
  params = common.abstract_variables(module, image_size=8)["params"]
  assert {g for g in params if "shortcut" in params[g]} == {"group2_0", "group3_0"}


def test_registered_names():
  assert {"wrn28_10", "wrn_ntk28_10", "wrn_tiny", "wrn_ntk_tiny"} <= set(
      ntk_zoo.models.list_models())


def test_bad_depth_message():
  with pytest.raises(ValueError, match=r"6 \* block_size \+ 4.*got 27"):
    wide_resnet.block_size_of(27)


# ---------------------------------------------------------------------------------------------
# Parity with independent torch forwards.


def torch_ntk_wrn(params, x_nchw, block_size, w_std=1.0, b_std=0.0):
  """neural-tangents WideResnet (NTK parameterization, lax 'SAME' padding) in torch."""

  def conv(x, p, stride=1):
    w = oihw(p["conv"]["kernel"])
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    size = x.shape[-1]
    total = max((math.ceil(size / stride) - 1) * stride + 3 - size, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, w, stride=stride) * (w_std / math.sqrt(fan_in))

  x = conv(torch.from_numpy(x_nchw), params["stem"])
  for g, stride in enumerate((1, 2, 2)):
    for j in range(block_size):
      p = params[f"group{g + 1}_{j}"]
      s = stride if j == 0 else 1
      y = conv(F.relu(x), p["conv1"], s)
      y = conv(F.relu(y), p["conv2"])
      x = y + (conv(x, p["shortcut"], s) if "shortcut" in p else x)
  x = x.mean(dim=(2, 3))
  kernel = t(params["head"]["kernel"])
  return (x @ kernel * (w_std / math.sqrt(kernel.shape[0]))
          + b_std * t(params["head"]["bias"])).numpy()


def torch_zk_wrn(params, stats, x_nchw, block_size):
  """Zagoruyko–Komodakis pre-activation WRN (inference BatchNorm) in torch."""

  def bn(x, p, s):
    return F.batch_norm(x, t(s["mean"]), t(s["var"]), t(p["scale"]), t(p["bias"]),
                        training=False, eps=1e-5)

  def conv(x, p, stride=1):
    w = oihw(p["kernel"])
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)

  x = conv(torch.from_numpy(x_nchw), params["conv1"])
  for g, stride in enumerate((1, 2, 2)):
    for j in range(block_size):
      name = f"group{g + 1}_{j}"
      p, s = params[name], stats[name]
      st = stride if j == 0 else 1
      o = F.relu(bn(x, p["bn1"], s["bn1"]))
      y = conv(o, p["conv1"], st)
      y = conv(F.relu(bn(y, p["bn2"], s["bn2"])), p["conv2"])
      x = y + (conv(o, p["shortcut"], st) if "shortcut" in p else x)
  x = F.relu(bn(x, params["bn"], stats["bn"])).mean(dim=(2, 3))
  return F.linear(x, t(params["fc"]["kernel"]).T, t(params["fc"]["bias"])).numpy()


def _randomize_stats(stats, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.asarray(
          rng.uniform(0.5, 2.0, a.shape) if path[-1].key == "var" else rng.normal(0, 0.1, a.shape),
          a.dtype), stats)


def test_ntk_wrn_matches_torch_reference(ntk_tiny):
  x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
  with torch.no_grad():
    ref = torch_ntk_wrn(ntk_tiny.params["params"], np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 1)
  ours = ntk_tiny.apply(ntk_tiny.params, jnp.asarray(x))
  assert rel_err(ours, ref) < 1e-5, rel_err(ours, ref)


def test_zk_wrn_matches_torch_reference(zk_tiny):
  stats = _randomize_stats(zk_tiny.state["batch_stats"])
  module = wide_resnet.WideResNet(depth=10, k=1, num_classes=10)
  x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
  ours = module.apply({**zk_tiny.params, "batch_stats": stats}, jnp.asarray(x))
  with torch.no_grad():
    ref = torch_zk_wrn(zk_tiny.params["params"], stats,
                       np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 1)
  assert rel_err(ours, ref) < 1e-5, rel_err(ours, ref)


def test_standard_parameterization_same_forward_as_ntk(ntk_tiny):
  # Standard-parameterized weights = NTK weights * W_std / sqrt(fan_in): same function.
  std = wide_resnet.WideResNetNTK(block_size=1, k=1, parameterization="standard")

  def rescale(path, w):
    if path[-1].key != "kernel":
      return w * 0.0   # b_std = 0: the NTK head bias has no effect.
    return w / math.sqrt(math.prod(w.shape[:-1]))

  params = jax.tree_util.tree_map_with_path(rescale, ntk_tiny.params)
  x = ntk_tiny.input_spec.dummy(2)
  np.testing.assert_allclose(std.apply(params, x), ntk_tiny.apply(ntk_tiny.params, x),
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="parameterization"):
    wide_resnet.WideResNetNTK(block_size=1, parameterization="mup").init(
        jax.random.PRNGKey(0), x)
