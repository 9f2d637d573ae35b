"""`ntk_fn`'s argument checks: each error is raised with its documented message.

The checks run before any engine work, so these tests use the Jacobian-contraction engine on a
tiny linear model (structured derivatives where the check is engine-independent is the same
code path: `ntk_zoo.ntk.api`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_zoo
from ntk_zoo import VmapAxes, ntk_fn

_RNG = np.random.default_rng(0)
PARAMS = {"w": jnp.asarray(_RNG.standard_normal((3, 2)), jnp.float32)}
X1 = jnp.asarray(_RNG.standard_normal((4, 3)), jnp.float32)
X2 = jnp.asarray(_RNG.standard_normal((2, 3)), jnp.float32)


def dense(params, x):
  return x @ params["w"]  # (N, 2)


def kernel(f=dense, **kwargs):
  return ntk_fn(f, implementation="jacobian_contraction", **kwargs)


# ---------------------------------------------------------------------------------------------
# Inputs.

def test_x1_x2_pytree_mismatch():
  f = lambda p, x: dense(p, x["a"])
  with pytest.raises(ValueError, match="x1 and x2 have different pytree structures"):
    kernel(f)({"a": X1}, [X2], PARAMS)


def test_x1_x2_dict_keys_mismatch():
  f = lambda p, x: dense(p, x["a"])
  with pytest.raises(ValueError, match="x1 and x2 have different pytree structures"):
    kernel(f)({"a": X1}, {"a": X2, "b": X2}, PARAMS)


@pytest.mark.parametrize("x2_shape", [(2, 4), (2, 3, 1)])
def test_trailing_shape_mismatch(x2_shape):
  with pytest.raises(ValueError, match=r"x1<root> has shape \(4, 3\) but x2<root> has shape "
                     r".*inputs may differ only in their batch axis \(axis 0\)"):
    kernel()(X1, jnp.ones(x2_shape, jnp.float32), PARAMS)


def test_trailing_shape_mismatch_names_the_leaf():
  f = lambda p, x: dense(p, x["a"]) + jnp.sum(x["b"], axis=1, keepdims=True)
  x1 = {"a": X1, "b": jnp.ones((4, 5))}
  x2 = {"a": X2, "b": jnp.ones((2, 6))}
  with pytest.raises(ValueError, match=r"x1\['b'\] has shape \(4, 5\) but x2\['b'\] has shape"):
    kernel(f)(x1, x2, PARAMS)


def test_trailing_shape_mismatch_with_vmap_axis():
  # With vmap_axes=1 the batch is axis 1: axis 0 must then agree.
  f = lambda p, x: dense(p, x.T)
  with pytest.raises(ValueError, match=r"inputs may differ only in their batch axis \(axis 1\)"):
    kernel(f, vmap_axes=1)(X1.T, jnp.ones((4, 2)), PARAMS)


def test_missing_params():
  with pytest.raises(TypeError, match="`params` is required"):
    kernel()(X1, X2)


# ---------------------------------------------------------------------------------------------
# Params.

def test_integer_params_leaf():
  params = {"w": PARAMS["w"], "n": jnp.int32(3)}
  with pytest.raises(TypeError, match=r"params\['n'\] has dtype int32; every params leaf is "
                     "differentiated, so it must be a float array"):
    kernel()(X1, X2, params)


def test_nested_integer_params_leaf():
  params = {"layers": ({"w": PARAMS["w"]}, {"steps": np.arange(3)})}
  with pytest.raises(TypeError, match=r"params\['layers'\]\[1\]\['steps'\] has dtype int"):
    kernel()(X1, X2, params)


def test_python_scalar_params_leaf():
  with pytest.raises(TypeError, match=r"params\['s'\] has dtype float"):
    kernel(lambda p, x: x * p["s"])(X1, X2, {"s": 1.0})


# ---------------------------------------------------------------------------------------------
# Outputs of f.

@pytest.mark.parametrize("bad", ["logits", object()], ids=["str", "object"])
def test_f_returns_non_array(bad):
  with pytest.raises(TypeError, match="f must return a pytree of arrays"):
    kernel(lambda p, x: bad)(X1, X2, PARAMS)


def test_f_returns_non_array_leaf():
  with pytest.raises(TypeError, match="f must return a pytree of arrays"):
    kernel(lambda p, x: [dense(p, x), "label"])(X1, X2, PARAMS)


def test_integer_outputs():
  f = lambda p, x: jnp.argmax(dense(p, x), axis=-1)[:, None]
  with pytest.raises(TypeError, match=r"f's output<root> has dtype int32; the NTK needs float "
                     "outputs"):
    kernel(f)(X1, X2, PARAMS)


def test_integer_output_leaf_in_pytree():
  f = lambda p, x: {"logits": dense(p, x), "label": jnp.argmax(dense(p, x), axis=-1)[:, None]}
  with pytest.raises(TypeError, match=r"f's output\['label'\] has dtype int32"):
    kernel(f)(X1, X2, PARAMS)


# ---------------------------------------------------------------------------------------------
# trace_axes / diagonal_axes.

@pytest.mark.parametrize("axes, bad", [((2,), 2), ((0, -3), -3)])
def test_trace_axis_out_of_range(axes, bad):
  with pytest.raises(ValueError, match=rf"trace_axes \({', '.join(map(str, axes))},?\) has axis "
                     rf"{bad} out of range for f's output<root> of shape \(4, 2\) "
                     r"\(valid: -2\.\.1\)"):
    kernel(trace_axes=axes)(X1, X2, PARAMS)


@pytest.mark.parametrize("axes, bad", [((2,), 2), ((-3,), -3)])
def test_diagonal_axis_out_of_range(axes, bad):
  with pytest.raises(ValueError, match=rf"diagonal_axes \({bad},\) has axis {bad} out of range "
                     r"for f's output<root> of shape \(4, 2\)"):
    kernel(trace_axes=(), diagonal_axes=axes)(X1, X2, PARAMS)


def test_axis_out_of_range_names_the_output_leaf():
  f = lambda p, x: {"a": dense(p, x), "b": dense(p, x)[:, 0]}  # "b" is 1-D.
  with pytest.raises(ValueError, match=r"has axis 1 out of range for f's output\['b'\] of shape "
                     r"\(4,\)"):
    kernel(f, trace_axes=(1,))(X1, None, PARAMS)


@pytest.mark.parametrize("trace_axes, diagonal_axes, overlap", [
    ((0,), (0,), "[0]"), ((-1,), (0, -1), "[-1]"), ((0, 1), (1, 0), "[0, 1]")])
def test_trace_diagonal_overlap_at_construction(trace_axes, diagonal_axes, overlap):
  with pytest.raises(ValueError, match=r"trace_axes .* and diagonal_axes .* overlap on "
                     + overlap.replace("[", r"\[").replace("]", r"\]")):
    kernel(trace_axes=trace_axes, diagonal_axes=diagonal_axes)


@pytest.mark.parametrize("trace_axes, diagonal_axes", [((1,), (-1,)), ((-2,), (0,))])
def test_trace_diagonal_overlap_at_call(trace_axes, diagonal_axes):
  # Different ints, same axis of a 2-D output: only detectable once the output rank is known.
  k = kernel(trace_axes=trace_axes, diagonal_axes=diagonal_axes)  # Construction is fine.
  with pytest.raises(ValueError, match=r"name the same axis of f's output<root> of shape "
                     r"\(4, 2\); an axis is either traced or diagonal"):
    k(X1, None, PARAMS)


@pytest.mark.parametrize("name", ["trace_axes", "diagonal_axes"])
def test_repeated_axis(name):
  with pytest.raises(ValueError, match=rf"{name} \(-1, -1\) repeats an axis; list each axis "
                     "once"):
    kernel(**{name: (-1, -1)})


def test_axes_not_ints():
  with pytest.raises(TypeError, match="trace_axes must be a sequence of ints, got None"):
    kernel(trace_axes=None)


def test_single_int_axes_accepted():
  k = kernel(trace_axes=-1, diagonal_axes=0)
  assert k.options.trace_axes == (-1,) and k.options.diagonal_axes == (0,)


def test_diagonal_batch_axis_with_different_batch_sizes():
  with pytest.raises(ValueError, match=r"f's output<root> has shape \(4, 2\) on x1 and \(2, 2\) "
                     r"on x2, but traced/diagonal axis 0 must have the same size on both"):
    kernel(trace_axes=(), diagonal_axes=(0,))(X1, X2, PARAMS)


def test_traced_batch_axis_with_different_batch_sizes():
  with pytest.raises(ValueError, match="traced/diagonal axis 0 must have the same size"):
    kernel(trace_axes=(0,))(X1, X2, PARAMS)


# ---------------------------------------------------------------------------------------------
# implementation.

@pytest.mark.parametrize("implementation", ["foo", "jacobians", 7, -1])
def test_unknown_implementation(implementation):
  with pytest.raises(ValueError, match=rf"Unknown implementation {implementation!r}\. Use one "
                     "of 'auto', 'jacobian_contraction', 'ntk_vector_products', "
                     "'structured_derivatives'"):
    ntk_fn(dense, implementation=implementation)


# ---------------------------------------------------------------------------------------------
# vmap_axes.

def _pytree_x_f(p, x):
  return dense(p, x["a"]) * jnp.mean(x["b"], axis=1, keepdims=True)


_X1_TREE = {"a": X1, "b": jnp.ones((4, 5))}
_X2_TREE = {"a": X2, "b": jnp.ones((2, 5))}


@pytest.mark.parametrize("inputs", [{"a": 0, "c": 0}, [0, 0], {"a": 0, "b": (0, 0)}],
                         ids=["keys", "list", "deeper"])
def test_vmap_axes_not_matching_x_structure(inputs):
  k = kernel(_pytree_x_f, vmap_axes=VmapAxes(inputs, 0))
  with pytest.raises(ValueError, match=r"vmap_axes inputs .* do not match the structure of x"):
    k(_X1_TREE, _X2_TREE, PARAMS)


def test_vmap_axes_not_matching_x_structure_x2_none():
  k = kernel(_pytree_x_f, vmap_axes=VmapAxes({"a": 0, "c": 0}, 0))
  with pytest.raises(ValueError, match=r"vmap_axes inputs .* do not match the structure of x"):
    k(_X1_TREE, None, PARAMS)


def test_vmap_axis_out_of_range():
  with pytest.raises(ValueError, match=r"vmap_axes input axis 3 is out of range for an input of "
                     r"shape \(4, 3\)"):
    kernel(vmap_axes=3)(X1, X2, PARAMS)


def test_vmap_axis_out_of_range_x2_none():
  with pytest.raises(ValueError, match=r"vmap_axes input axis 3 is out of range"):
    kernel(vmap_axes=3)(X1, None, PARAMS)


def test_vmap_axes_batched_kwargs_not_supported():
  with pytest.raises(NotImplementedError, match="vmap_axes with batched keyword arguments"):
    kernel(vmap_axes=(0, 0, {"scale": 0}))


def test_vmap_output_axes_mismatch_structure():
  f = lambda p, x: x @ p["w"]
  p, x = {"w": jnp.ones((3, 2))}, jnp.ones((4, 3))
  kernel = ntk_fn(f, implementation="jc", vmap_axes=VmapAxes(0, {"a": 0}))
  with pytest.raises(ValueError, match="vmap_axes outputs .* do not match the structure of f's output"):
    kernel(x, None, p)


def test_vmap_output_axis_out_of_range():
  f = lambda p, x: x @ p["w"]
  p, x = {"w": jnp.ones((3, 2))}, jnp.ones((4, 3))
  kernel = ntk_fn(f, implementation="jc", vmap_axes=VmapAxes(0, 2))
  with pytest.raises(ValueError, match="vmap_axes output axis 2 is not a valid batch axis"):
    kernel(x, None, p)


@pytest.mark.parametrize("implementation", ["auto", "vp", "sd", "jc"])
def test_f_without_outputs_gives_no_kernels(implementation):
  params = {"w": jnp.ones((3, 2))}
  kernel = ntk_zoo.ntk_fn(lambda p, x: {}, implementation=implementation, vmap_axes=0)
  assert kernel(jnp.ones((2, 3)), None, params) == {}


def test_structured_kernel_function():
  from ntk_zoo.ntk.options import NTKOptions  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk.structured import engine  # pylint: disable=g-import-not-at-top

  def f(p, x):
    return jnp.tanh(x @ p["w"])

  params, x = {"w": jnp.arange(6.0).reshape(3, 2) / 5}, jnp.ones((4, 3)) / 3
  out = jax.eval_shape(f, params, x)
  got = engine.kernel(f, params, x, None, NTKOptions(trace_axes=(-1,)), out)
  want = ntk_zoo.ntk_fn(f, implementation="jc")(x, None, params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
