"""Tests of ntk_zoo.models.flax_checkpoints: msgpack / Orbax round trips and mismatch errors."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, serialization

from ntk_zoo.models import Model
from ntk_zoo.models.adapters import from_haiku, from_linen, from_nnx
from ntk_zoo.models.convert import flax_checkpoints
from ntk_zoo.models.convert.checkpoints import CheckpointMismatchError

FORMATS = ("msgpack", "orbax")
D_IN, NUM_CLASSES = 5, 3
LINEN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
HAIKU_INIT = hk.initializers.VarianceScaling(1.0, "fan_in", "normal")


def _x(n=4, seed=0):
  return np.random.default_rng(seed).standard_normal((n, D_IN)).astype(np.float32)


def _close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    if jax.dtypes.issubdtype(u.dtype, jax.dtypes.prng_key):
      u, v = jax.random.key_data(u), jax.random.key_data(v)
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------------------------
# Small models, built twice with different seeds (source and target of a load).


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(4, kernel_init=LINEN_INIT)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(NUM_CLASSES, kernel_init=LINEN_INIT)(jax.nn.relu(x))


_LINEN_INIT_FN = jax.jit(lambda k, x: LinenNet().init(k, x, train=False))


def _linen_variables(seed):
  variables = _LINEN_INIT_FN(jax.random.PRNGKey(seed), _x(1))
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype),
                       variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def _linen(seed):
  return from_linen(LinenNet(), _linen_variables(seed), input_spec=(D_IN,),
                    apply_kwargs={"train": False})


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(D_IN, 4, kernel_init=LINEN_INIT, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.l2 = nnx.Linear(4, NUM_CLASSES, kernel_init=LINEN_INIT, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.dropout(jax.nn.relu(self.bn(self.l1(x)))))


@nnx.jit(static_argnums=0)
def _new_nnx(seed):
  return NNXNet(nnx.Rngs(seed))


def _nnx(seed):
  net = _new_nnx(seed)
  net.bn.mean[...] = jnp.full((4,), 0.1 * seed)
  return from_nnx(net, input_spec=(D_IN,))


def _haiku_forward(x, is_training: bool):
  x = hk.Linear(4, w_init=HAIKU_INIT)(x)
  x = hk.BatchNorm(True, True, 0.9)(x, is_training)
  return hk.Linear(NUM_CLASSES, w_init=HAIKU_INIT)(jax.nn.relu(x))


_HAIKU = hk.transform_with_state(_haiku_forward)
_HAIKU_INIT_FN = jax.jit(lambda k, x: _HAIKU.init(k, x, is_training=True))


def _haiku(seed, **kwargs):
  params, state = _HAIKU_INIT_FN(jax.random.PRNGKey(seed), _x(2, seed))
  return from_haiku(_HAIKU, params, state, input_spec=(D_IN,),
                    apply_kwargs={"is_training": False}, **kwargs)


BUILDERS = {"linen": _linen, "nnx": _nnx, "haiku": _haiku}


# ---------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framework", sorted(BUILDERS))
def test_round_trip_params_and_state(framework, fmt, tmp_path):
  source, target = BUILDERS[framework](1), BUILDERS[framework](2)
  x = _x()
  assert not np.allclose(source(x), target(x))
  path = flax_checkpoints.save(tmp_path / f"ckpt.{fmt}", source, format=fmt)
  assert os.path.isdir(path) == (fmt == "orbax")
  loaded = flax_checkpoints.load_into(target, path)  # format detected
  _trees_equal(loaded.params, source.params)
  _trees_equal(loaded.state, source.state)
  _close(loaded(x), source(x))
  _close(jax.jit(loaded.apply)(loaded.params, x), source(x))
  assert loaded.name == target.name and loaded.input_spec == target.input_spec
  _close(target(x), BUILDERS[framework](2)(x))  # the target itself is untouched


@pytest.mark.parametrize("fmt", FORMATS)
def test_haiku_frozen_params_round_trip(fmt, tmp_path):
  only_w = lambda module_name, name, value: name == "w"
  source, target = _haiku(1, differentiate=only_w), _haiku(2, differentiate=only_w)
  path = flax_checkpoints.save(tmp_path / "h", source, format=fmt)
  loaded = flax_checkpoints.load_into(target, path, format=fmt)
  _trees_equal(loaded.state["params"], source.state["params"])
  _close(loaded(_x()), source(_x()))


def test_linen_variables_file_written_by_flax(tmp_path):
  """`flax.serialization.to_bytes(variables)`: {"params": ..., "batch_stats": ...} at top level."""
  source_vars, target = _linen_variables(1), _linen(2)
  path = tmp_path / "variables.msgpack"
  path.write_bytes(serialization.to_bytes(source_vars))
  loaded = flax_checkpoints.load_into(target, path)
  _close(loaded(_x()), LinenNet().apply(source_vars, _x(), train=False))


def test_haiku_native_params_state_pair(tmp_path):
  """A Haiku user's own `{"params": params, "state": state}` file."""
  params, state = _HAIKU_INIT_FN(jax.random.PRNGKey(1), _x(2, 1))
  path = flax_checkpoints.save_msgpack(tmp_path / "hk.msgpack", {"params": params, "state": state})
  loaded = flax_checkpoints.load_into(_haiku(2), path)
  expected, _ = _HAIKU.apply(params, state, None, _x(), is_training=False)
  _close(loaded(_x()), expected)


def test_params_only_file_keeps_model_state(tmp_path):
  source, target = _linen(1), _linen(2)
  path = flax_checkpoints.save_msgpack(tmp_path / "p.msgpack", {"params": source.params})
  loaded = flax_checkpoints.load_into(target, path)
  _trees_equal(loaded.params, source.params)
  assert loaded.state is target.state


def _closure_model(seed) -> Model:
  """A Model whose params are the inner "params" tree and whose state is a plain closure."""
  variables = _linen_variables(seed)
  stats = {"batch_stats": variables["batch_stats"]}
  apply = lambda p, x: LinenNet().apply({"params": p, **stats}, x, train=False)
  return Model(apply=apply, params=variables["params"], state=stats, num_classes=NUM_CLASSES)


def test_params_and_collections_layout_into_closure_model(tmp_path):
  source_vars, target = _linen_variables(1), _closure_model(2)
  path = tmp_path / "params.msgpack"
  path.write_bytes(serialization.to_bytes({"params": source_vars["params"]}))
  loaded = flax_checkpoints.load_into(target, path)
  _trees_equal(loaded.params, source_vars["params"])
  # The file's BatchNorm statistics cannot be bound into a closure: a clear error.
  path.write_bytes(serialization.to_bytes(source_vars))
  with pytest.raises(ValueError, match="cannot be re-bound"):
    flax_checkpoints.load_into(target, path)


def test_dtype_follows_model(tmp_path):
  source, target = _linen(1), _linen(2)
  params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), source.params)
  path = flax_checkpoints.save_msgpack(tmp_path / "f64.msgpack", {"params": params64})
  loaded = flax_checkpoints.load_into(target, path)
  assert {a.dtype for a in jax.tree_util.tree_leaves(loaded.params)} == {np.dtype(np.float32)}


def test_read_returns_nested_dicts(tmp_path):
  tree = {"a": {"b": np.arange(3.0)}, "res_net/~/conv": {"w": np.ones((2, 2))}}
  for fmt, save in (("msgpack", flax_checkpoints.save_msgpack),
                    ("orbax", flax_checkpoints.save_orbax)):
    path = save(tmp_path / fmt, tree)
    back = flax_checkpoints.read(path)
    assert flax_checkpoints.detect_format(path) == fmt
    np.testing.assert_array_equal(back["a"]["b"], tree["a"]["b"])
    np.testing.assert_array_equal(back["res_net/~/conv"]["w"], tree["res_net/~/conv"]["w"])


# ---------------------------------------------------------------------------------------------
# Errors.


def _bad_linen_tree(model):
  """model.params with one key dropped, one added and one kernel of another shape."""
  params = jax.tree.map(np.asarray, model.params["params"])
  params = {**params, "Dense_1": {"kernel": np.zeros((4, 7), np.float32),
                                  "bias": np.zeros((NUM_CLASSES,), np.float32)},
            "Extra": {"w": np.zeros((1,), np.float32)}}
  params["Dense_0"] = {"kernel": params["Dense_0"]["kernel"]}
  return {"params": params}


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatch_error_lists_missing_unexpected_and_shapes(fmt, tmp_path):
  target = _linen(2)
  save = flax_checkpoints.save_msgpack if fmt == "msgpack" else flax_checkpoints.save_orbax
  path = save(tmp_path / "bad", _bad_linen_tree(target))
  with pytest.raises(CheckpointMismatchError) as info:
    flax_checkpoints.load_into(target, path)
  message = str(info.value)
  assert "missing keys" in message and "params/Dense_0/bias" in message
  assert "unexpected keys" in message and "params/Extra/w" in message
  assert "shape conflicts" in message
  assert "params/Dense_1/kernel: model (4, 3) vs file (4, 7)" in message


def test_partial_state_is_a_mismatch(tmp_path):
  source, target = _linen(1), _linen(2)
  tree = {"params": source.params,
          "state": {"batch_stats": {"BatchNorm_0": {"mean": source.state["batch_stats"][
              "BatchNorm_0"]["mean"]}}}}
  path = flax_checkpoints.save_msgpack(tmp_path / "partial.msgpack", tree)
  with pytest.raises(CheckpointMismatchError, match="state/batch_stats/BatchNorm_0/var"):
    flax_checkpoints.load_into(target, path)


def test_wrong_framework_checkpoint_is_a_mismatch(tmp_path):
  path = flax_checkpoints.save(tmp_path / "h.msgpack", _haiku(1))
  with pytest.raises(CheckpointMismatchError,
                     match=r"(?s)missing keys.*Dense_0/kernel.*unexpected keys.*linear/w"):
    flax_checkpoints.load_into(_linen(2), path)


def test_missing_file_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    flax_checkpoints.load_into(_linen(2), tmp_path / "nothing")


def test_unknown_format_error(tmp_path):
  path = flax_checkpoints.save(tmp_path / "a.msgpack", _linen(1))
  with pytest.raises(ValueError, match="Unknown checkpoint format 'npz'"):
    flax_checkpoints.load_into(_linen(2), path, format="npz")
  with pytest.raises(ValueError, match="Unknown checkpoint format 'pickle'"):
    flax_checkpoints.save(tmp_path / "b", _linen(1), format="pickle")


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_silent_overwrite(fmt, tmp_path):
  model = _linen(1)
  path = flax_checkpoints.save(tmp_path / "c", model, format=fmt)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    flax_checkpoints.save(path, model, format=fmt)
  other = dataclasses.replace(model, params=jax.tree.map(jnp.zeros_like, model.params))
  flax_checkpoints.save(path, other, format=fmt, overwrite=True)
  loaded = flax_checkpoints.load_into(model, path)
  assert all(np.all(np.asarray(a) == 0) for a in jax.tree_util.tree_leaves(loaded.params))
