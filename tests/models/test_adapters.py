"""Tests of ntk_zoo.models.adapters: Linen / NNX / Haiku models as pure `apply(params, x)`.

Each adapter is checked against calling the framework directly in inference mode, for its
`differentiate` split, jit/grad, error messages, and a full NTK against the brute-force reference.
"""

from __future__ import annotations

import importlib.util

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ntk_zoo.models import InputSpec
from ntk_zoo.models.adapters import AdapterError, BoundApply, from_haiku, from_linen, from_nnx

SHAPE = (6, 6, 2)
NUM_CLASSES = 3

# Plain normal initializers: the frameworks' default truncated normals take seconds to compile
# per shape on CPU, which would dominate these tests.
LINEN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
HAIKU_INIT = hk.initializers.VarianceScaling(1.0, "fan_in", "normal")


def _x(n=4, seed=1):
  """(n, *SHAPE) float32 inputs (numpy RNG: no per-shape XLA compilation)."""
  return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def _assert_close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _randomize(tree, seed, low=0.5, high=1.5):
  """Replaces every float leaf by uniform(low, high) values: non-trivial BatchNorm statistics."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: jnp.asarray(rng.uniform(low, high, jnp.shape(l)), l.dtype), tree)


# ---------------------------------------------------------------------------------------------
# Flax Linen.


class LinenNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> mean pool -> Dense."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3), kernel_init=LINEN_INIT)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=LINEN_INIT)(x)


def _linen_variables(module):
  """Initialized variables (one compiled init) with non-trivial BatchNorm statistics."""
  init = jax.jit(lambda key, x: module.init(key, x, train=False))
  variables = init(jax.random.PRNGKey(0), _x(1))
  return {**variables, "batch_stats": _randomize(variables["batch_stats"], 7)}


@pytest.fixture(scope="module")
def linen():
  module = LinenNet()
  return module, _linen_variables(module)


def test_linen_logits_match_module(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  x = _x()
  _assert_close(model.apply(model.params, x), module.apply(variables, x, train=False))
  assert model.num_classes == NUM_CLASSES
  assert model.name == "LinenNet"
  assert model.input_spec == InputSpec(shape=SHAPE)
  assert isinstance(model.apply, BoundApply)


def test_linen_is_deterministic_in_eval(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  x = _x()
  _assert_close(model(x), model(x), tol=0)


def test_linen_differentiate_params_only(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  assert set(model.params) == {"params"}
  assert set(model.state) == {"batch_stats"}
  n = sum(np.size(l) for l in jax.tree_util.tree_leaves(variables["params"]))
  assert model.num_params == n


def test_linen_differentiate_params_and_batch_stats(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, differentiate=("params", "batch_stats"),
                     apply_kwargs={"train": False})
  assert set(model.params) == {"params", "batch_stats"}
  assert model.state == {}
  x = _x()
  _assert_close(model(x), module.apply(variables, x, train=False))
  grads = jax.grad(lambda p: model.apply(p, x).sum())(model.params)
  assert np.any(np.asarray(grads["batch_stats"]["BatchNorm_0"]["mean"]) != 0)


def test_linen_differentiate_string(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, differentiate="params",
                     apply_kwargs={"train": False})
  assert set(model.params) == {"params"}


def test_linen_jit_and_grad(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=InputSpec(SHAPE), num_classes=NUM_CLASSES,
                     apply_kwargs={"train": False})
  x = _x()
  _assert_close(jax.jit(model.apply)(model.params, x), model.apply(model.params, x))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(model.params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_linen_missing_collection_error(linen):
  module, variables = linen
  with pytest.raises(AdapterError, match=r"\['batch_stat'\].*available collections: "
                                         r"\['batch_stats', 'params'\]"):
    from_linen(module, variables, input_spec=SHAPE, differentiate=("params", "batch_stat"),
               apply_kwargs={"train": False})


def test_linen_missing_train_flag_error_names_input_shape(linen):
  module, variables = linen
  with pytest.raises(AdapterError, match=r"dummy input of shape \(2, 6, 6, 2\).*train"):
    from_linen(module, variables, input_spec=SHAPE)


def test_linen_train_mode_rejected(linen):
  module, variables = linen
  with pytest.raises(AdapterError, match="immutable"):
    from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": True})


def test_linen_wrong_input_shape_error(linen):
  module, variables = linen
  with pytest.raises(AdapterError, match=r"dummy input of shape \(2, 6, 6, 5\)"):
    from_linen(module, variables, input_spec=(6, 6, 5), apply_kwargs={"train": False})


def test_linen_num_classes_mismatch_error(linen):
  module, variables = linen
  with pytest.raises(AdapterError, match="num_classes=5 was given but the model returns 3"):
    from_linen(module, variables, input_spec=SHAPE, num_classes=5, apply_kwargs={"train": False})


def test_linen_non_logits_output_error():
  module = nn.Conv(3, (1, 1))
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), _x(1))
  with pytest.raises(AdapterError, match=r"shape \(N, num_classes\)"):
    from_linen(module, variables, input_spec=SHAPE)


def test_bound_apply_rebind(linen):
  module, variables = linen
  model = from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  other = {"batch_stats": _randomize(variables["batch_stats"], 8)}
  x = _x()
  rebound = model.apply.rebind(other)
  _assert_close(rebound(model.params, x),
                module.apply({**model.params, **other}, x, train=False))
  _assert_close(model(x), module.apply(variables, x, train=False))  # original unchanged


def test_equal_linen_models_share_apply_and_jit_trace():
  traces = []

  class Counting(nn.Module):
    @nn.compact
    def __call__(self, x):
      traces.append(x.shape)
      return nn.Dense(NUM_CLASSES, kernel_init=LINEN_INIT)(x.reshape(x.shape[0], -1))

  init = jax.jit(Counting().init)
  a = from_linen(Counting(), init(jax.random.PRNGKey(0), _x(1)), input_spec=SHAPE)
  b = from_linen(Counting(), init(jax.random.PRNGKey(1), _x(1)), input_spec=SHAPE)
  assert a.apply == b.apply and hash(a.apply) == hash(b.apply) and a.apply.fn is b.apply.fn
  traces.clear()
  x = _x(3)
  _assert_close(jax.jit(a.apply)(b.params, x), b.apply(b.params, x))
  jax.jit(b.apply)(b.params, x)
  assert len(traces) == 2  # one for jit (shared by a and b), one for the eager call


def test_bound_apply_equality_needs_the_same_state_arrays(linen):
  module, variables = linen
  a = from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  b = from_linen(LinenNet(num_classes=NUM_CLASSES), variables, input_spec=SHAPE,
                 apply_kwargs={"train": False})
  assert a.apply == b.apply  # an equal module, the very same statistics arrays
  other = a.apply.rebind({"batch_stats": _randomize(variables["batch_stats"], 8)})
  assert other != a.apply and other.fn is a.apply.fn
  x = _x(3)
  assert not np.allclose(jax.jit(other)(a.params, x), jax.jit(a.apply)(a.params, x))
  assert a.apply != (lambda p, x: a.apply(p, x))


# ---------------------------------------------------------------------------------------------
# Flax NNX.


class NNXNet(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> mean pool -> Linear."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(SHAPE[-1], 4, (3, 3), kernel_init=LINEN_INIT, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(4, NUM_CLASSES, kernel_init=LINEN_INIT, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(jax.nn.relu(self.bn(self.conv(x))))
    return self.head(x.mean(axis=(1, 2)))


@nnx.jit(static_argnums=0)
def _new_nnx_net(seed):
  return NNXNet(nnx.Rngs(seed))


def _nnx_net(seed=0):
  net = _new_nnx_net(seed)
  net.bn.mean[...] = _randomize(net.bn.mean[...], 3, -0.5, 0.5)
  net.bn.var[...] = _randomize(net.bn.var[...], 4)
  return net


def _nnx_eval_logits(net, x):
  net.eval()
  try:
    return net(x)
  finally:
    net.train()


def test_nnx_logits_match_module_in_eval_mode():
  net = _nnx_net()
  model = from_nnx(net, input_spec=SHAPE)
  x = _x()
  _assert_close(model.apply(model.params, x), _nnx_eval_logits(net, x))
  assert model.num_classes == NUM_CLASSES and model.name == "NNXNet"
  _assert_close(model(x), model(x), tol=0)  # dropout off


def test_nnx_does_not_switch_callers_module():
  net = _nnx_net()
  from_nnx(net, input_spec=SHAPE)
  assert net.bn.use_running_average is False
  assert net.dropout.deterministic is False


def test_nnx_differentiate_default_is_param():
  model = from_nnx(_nnx_net(), input_spec=SHAPE)
  assert set(model.params) == {"conv", "bn", "head"}
  assert set(model.params["bn"]) == {"scale", "bias"}
  assert set(model.state["bn"]) == {"mean", "var"}
  assert isinstance(model.params["conv"]["kernel"], jax.Array)  # pure dicts of arrays


def test_nnx_differentiate_params_and_batch_stats():
  net = _nnx_net()
  model = from_nnx(net, input_spec=SHAPE, differentiate=nnx.Any(nnx.Param, nnx.BatchStat))
  assert set(model.params["bn"]) == {"scale", "bias", "mean", "var"}
  assert "bn" not in model.state
  x = _x()
  _assert_close(model(x), _nnx_eval_logits(net, x))


def test_nnx_jit_and_grad():
  model = from_nnx(_nnx_net(), input_spec=SHAPE)
  x = _x()
  _assert_close(jax.jit(model.apply)(model.params, x), model.apply(model.params, x))
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(model.params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.params)
  assert np.any(np.asarray(grads["conv"]["kernel"]) != 0)


def test_nnx_filter_selecting_nothing_error():
  with pytest.raises(AdapterError, match=r"selects no variables.*'BatchStat'.*'Param'"):
    from_nnx(_nnx_net(), input_spec=SHAPE, differentiate=nnx.Intermediate)


def test_nnx_wrong_input_shape_error():
  with pytest.raises(AdapterError,
                     match=r"NNX model 'NNXNet'.*dummy input of shape \(2, 6, 6, 7\)"):
    from_nnx(_nnx_net(), input_spec=(6, 6, 7))


# ---------------------------------------------------------------------------------------------
# Haiku.


def _haiku_forward(x, is_training: bool):
  x = hk.Conv2D(4, 3, w_init=HAIKU_INIT)(x)
  x = hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.5)(x, is_training)
  x = jax.nn.relu(x)
  if is_training:
    x = hk.dropout(hk.next_rng_key(), 0.5, x)
  x = x.mean(axis=(1, 2))
  return hk.Linear(NUM_CLASSES, w_init=HAIKU_INIT)(x)


@pytest.fixture(scope="module")
def haiku_net():
  """A transform_with_state pair, its params, and state after two training steps."""
  net = hk.transform_with_state(_haiku_forward)
  params, state = jax.jit(lambda key, x: net.init(key, x, is_training=True))(
      jax.random.PRNGKey(0), _x(2))
  train_apply = jax.jit(lambda p, s, r, x: net.apply(p, s, r, x, is_training=True))
  for i in range(2):
    _, state = train_apply(params, state, jax.random.PRNGKey(i), 3.0 * _x(8, seed=10 + i) + 1.0)
  return net, params, state


def test_haiku_logits_match_transform(haiku_net):
  net, params, state = haiku_net
  model = from_haiku(net, params, state, input_spec=SHAPE, apply_kwargs={"is_training": False})
  x = _x()
  expected, _ = net.apply(params, state, None, x, is_training=False)
  _assert_close(model(x), expected)
  assert model.num_classes == NUM_CLASSES
  assert set(model.state) == {"params", "state"} and model.state["params"] == {}
  assert jax.tree_util.tree_structure(model.state["state"]) == \
      jax.tree_util.tree_structure(state)


def test_haiku_without_apply_rng(haiku_net):
  net, params, state = haiku_net
  model = from_haiku(hk.without_apply_rng(net), params, state, input_spec=SHAPE,
                     apply_kwargs={"is_training": False})
  x = _x()
  _assert_close(model(x), net.apply(params, state, None, x, is_training=False)[0])


def test_haiku_stateless_transform():
  net = hk.transform(lambda x: hk.nets.MLP([5, NUM_CLASSES], w_init=HAIKU_INIT)(
      x.reshape(x.shape[0], -1)))
  params = jax.jit(net.init)(jax.random.PRNGKey(0), _x(1))
  model = from_haiku(net, params, input_spec=SHAPE)
  x = _x()
  _assert_close(model(x), net.apply(params, None, x))
  assert model.name == "mlp"
  assert model.state == {"params": {}, "state": {}}


def test_haiku_differentiate_predicate(haiku_net):
  net, params, state = haiku_net
  model = from_haiku(net, params, state, input_spec=SHAPE, apply_kwargs={"is_training": False},
                     differentiate=lambda module_name, name, value: name == "w")
  assert {name for bundle in model.params.values() for name in bundle} == {"w"}
  frozen = {name for bundle in model.state["params"].values() for name in bundle}
  assert frozen == {"b", "scale", "offset"}
  x = _x()
  _assert_close(model(x), net.apply(params, state, None, x, is_training=False)[0])
  grads = jax.jit(jax.grad(lambda p: model.apply(p, x).sum()))(model.params)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.params)


def test_haiku_jit_and_grad(haiku_net):
  net, params, state = haiku_net
  model = from_haiku(net, params, state, input_spec=SHAPE, apply_kwargs={"is_training": False})
  x = _x()
  _assert_close(jax.jit(model.apply)(model.params, x), model(x))
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(model.params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_haiku_missing_is_training_error(haiku_net):
  net, params, state = haiku_net
  with pytest.raises(AdapterError, match=r"dummy input of shape \(2, 6, 6, 2\).*is_training"):
    from_haiku(net, params, state, input_spec=SHAPE)


def test_haiku_predicate_selecting_nothing_error(haiku_net):
  net, params, state = haiku_net
  with pytest.raises(AdapterError, match="selects no parameter"):
    from_haiku(net, params, state, input_spec=SHAPE, apply_kwargs={"is_training": False},
               differentiate=lambda *_: False)


def test_haiku_state_for_stateless_transform_error(haiku_net):
  _, params, state = haiku_net
  with pytest.raises(AdapterError, match="transform_with_state"):
    from_haiku(hk.transform(_haiku_forward), params, state, input_spec=SHAPE)


def test_haiku_not_a_transform_error(haiku_net):
  _, params, state = haiku_net
  with pytest.raises(AdapterError, match="expected hk.transform"):
    from_haiku(_haiku_forward, params, state, input_spec=SHAPE)


# ---------------------------------------------------------------------------------------------
# Full NTK through each adapter, against the brute-force reference: the Jacobian-contraction
# engine here; the structured and NTK-vector-products engines in test_zoo_ntk.py.

IMPLEMENTATIONS = ("jacobian_contraction",)


def _tiny_model(adapter: str):
  if adapter == "linen":
    module = LinenNet()
    return from_linen(module, _linen_variables(module), input_spec=SHAPE,
                      apply_kwargs={"train": False})
  if adapter == "nnx":
    return from_nnx(_nnx_net(), input_spec=SHAPE)
  net = hk.transform_with_state(_haiku_forward)
  params, state = jax.jit(lambda key, x: net.init(key, x, is_training=True))(
      jax.random.PRNGKey(0), _x(2))
  return from_haiku(net, params, _randomize(state, 9), input_spec=SHAPE,
                    apply_kwargs={"is_training": False})


_NTK_CASES = {}


def _ntk_case(adapter: str):
  """(model, x1 (3, *SHAPE), x2 (2, *SHAPE), reference (3, 2, O, O)), computed once per adapter."""
  if adapter not in _NTK_CASES:
    from ntk_zoo.testing import reference_ntk  # pylint: disable=g-import-not-at-top
    model = _tiny_model(adapter)
    x1, x2 = _x(3, seed=21), _x(2, seed=22)
    _NTK_CASES[adapter] = (model, x1, x2,
                           reference_ntk(model.apply, x1, x2, model.params, trace_axes=()))
  return _NTK_CASES[adapter]


@pytest.mark.skipif(importlib.util.find_spec("ntk_zoo.ntk.api") is None,
                    reason="ntk_zoo.ntk.api not written yet")
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("adapter", ("linen", "nnx", "haiku"))
def test_full_ntk_matches_reference(adapter, impl):
  from ntk_zoo import ntk_fn  # pylint: disable=g-import-not-at-top
  from ntk_zoo.testing import assert_ntk_close  # pylint: disable=g-import-not-at-top

  model, x1, x2, reference = _ntk_case(adapter)
  k = ntk_fn(model.apply, implementation=impl, trace_axes=())(x1, x2, model.params)
  assert k.shape == (3, 2, NUM_CLASSES, NUM_CLASSES)
  assert_ntk_close(k, reference)
