"""Tiny model cases shared by the NTK engine tests.

Each case is `case(dtype, n2=2) -> (f, params, x1, x2)`:

* `f(params, x) -> outputs` is per-example along axis 0 of every input and output leaf (no
  mixing across examples), so `vmap_axes=0` is valid for it;
* `x1` has N1 = 3 examples and `x2` has `n2` examples (pass `n2=3` for `diagonal_axes=(0,)`
  with an explicit x2);
* every number is drawn in float32 and then cast to `dtype`, so the float32 and float64
  variants of a case hold *the same values* and one float64 reference serves both.

Sizes are tiny (widths <= 8, images <= 6x6) so each kernel takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Case = tuple[Callable, PyTree, PyTree, PyTree]

N1 = 3
IMPLEMENTATIONS = ("jacobian_contraction", "ntk_vector_products", "structured_derivatives")


class _Draw:
  """Deterministic float32 normal draws, cast to the case's dtype."""

  def __init__(self, seed: int, dtype):
    self._rng = np.random.default_rng(seed)
    self._dtype = dtype

  def __call__(self, *shape: int, scale: float = 1.0) -> jax.Array:
    v = (scale * self._rng.standard_normal(shape)).astype(np.float32)
    return jnp.asarray(v, dtype=self._dtype)


def _glorot(draw: _Draw, fan_in: int, *shape: int) -> jax.Array:
  return draw(*shape, scale=1.0 / np.sqrt(fan_in))


# ---------------------------------------------------------------------------------------------
# MLPs.

def _mlp(activation: Callable, seed: int) -> Callable[..., Case]:
  def case(dtype, n2: int = 2) -> Case:
    draw = _Draw(seed, dtype)
    sizes = (5, 8, 6, 3)
    params = [{"w": _glorot(draw, a, a, b), "b": draw(b, scale=0.1)}
              for a, b in zip(sizes[:-1], sizes[1:])]

    def f(params, x):
      for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
          x = activation(x)
      return x

    return f, params, draw(N1, 5), draw(n2, 5)
  return case


mlp_tanh = _mlp(jnp.tanh, seed=0)
mlp_relu = _mlp(jax.nn.relu, seed=1)


# ---------------------------------------------------------------------------------------------
# CNN with raw lax convolutions (NHWC / HWIO): strides, SAME and explicit padding, lhs and rhs
# dilation, feature_group_count > 1.

_DN = ("NHWC", "HWIO", "NHWC")


def cnn(dtype, n2: int = 2) -> Case:
  draw = _Draw(2, dtype)
  params = {
      # 6x6x2 -> 3x3x4: stride 2, SAME padding.
      "conv1": {"w": _glorot(draw, 18, 3, 3, 2, 4), "b": draw(4, scale=0.1)},
      # 3x3x4 -> 3x3x4: rhs dilation (2, 1), explicit asymmetric padding, 2 groups.
      "conv2": {"w": _glorot(draw, 8, 2, 2, 2, 4)},
      # 3x3x4 -> 4x4x3: lhs dilation (2, 2) (a transposed convolution), explicit padding.
      "conv3": {"w": _glorot(draw, 16, 2, 2, 4, 3), "b": draw(3, scale=0.1)},
      "dense": {"w": _glorot(draw, 3, 3, 3)},
  }

  def f(params, x):
    p = params
    y = jax.lax.conv_general_dilated(x, p["conv1"]["w"], window_strides=(2, 2), padding="SAME",
                                     dimension_numbers=_DN) + p["conv1"]["b"]
    y = jnp.tanh(y)
    y = jax.lax.conv_general_dilated(y, p["conv2"]["w"], window_strides=(1, 1),
                                     padding=((1, 1), (0, 1)), rhs_dilation=(2, 1),
                                     feature_group_count=2, dimension_numbers=_DN)
    y = jax.nn.relu(y)
    y = jax.lax.conv_general_dilated(y, p["conv3"]["w"], window_strides=(1, 1),
                                     padding=((0, 0), (1, 0)), lhs_dilation=(2, 2),
                                     dimension_numbers=_DN) + p["conv3"]["b"]
    y = jnp.tanh(y)
    return jnp.mean(y, axis=(1, 2)) @ p["dense"]["w"]  # (N, 3)

  return f, params, draw(N1, 6, 6, 2), draw(n2, 6, 6, 2)


# ---------------------------------------------------------------------------------------------
# Residual CNN (Flax Linen): a stem and two blocks with skip connections.

class _Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="conv_a")(x))
    y = nn.Conv(self.features, (3, 3), padding="SAME", name="conv_b")(y)
    return nn.relu(x + y)


class _ResNet(nn.Module):
  features: int = 4
  num_outputs: int = 3

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.features, (3, 3), strides=(1, 1), padding="SAME", name="stem")(x))
    x = _Block(self.features, name="block1")(x)
    x = _Block(self.features, name="block2")(x)
    return nn.Dense(self.num_outputs, name="head")(jnp.mean(x, axis=(1, 2)))


def resnet(dtype, n2: int = 2) -> Case:
  draw = _Draw(3, dtype)
  model = _ResNet()
  x1, x2 = draw(N1, 4, 4, 2), draw(n2, 4, 4, 2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x1)["params"]
  params = jax.tree_util.tree_map(
      lambda s: draw(*s.shape, scale=0.1) if s.ndim == 1
      else _glorot(draw, int(np.prod(s.shape[:-1])), *s.shape), shapes)

  def f(params, x):
    return model.apply({"params": params}, x)

  return f, params, x1, x2


# ---------------------------------------------------------------------------------------------
# Self-attention block: pre-layernorm, 2-head softmax attention over the tokens axis, residual.
# Output (N, T, D): a 3-D output, so trace_axes=(-1,) leaves a (T1, T2) pair.

def attention(dtype, n2: int = 2) -> Case:
  draw = _Draw(4, dtype)
  t, d, heads = 3, 4, 2
  params = {
      "ln": {"scale": 1.0 + draw(d, scale=0.1), "bias": draw(d, scale=0.1)},
      "qkv": _glorot(draw, d, d, 3, heads, d // heads),
      "out": _glorot(draw, d, heads, d // heads, d),
  }

  def f(params, x):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    h = (x - mu) / jnp.sqrt(var + 1e-5) * params["ln"]["scale"] + params["ln"]["bias"]
    q, k, v = jnp.einsum("ntd,dchk->cnthk", h, params["qkv"])
    logits = jnp.einsum("nqhk,nshk->nhqs", q, k) / float(np.sqrt(d // heads))
    att = jax.nn.softmax(logits, axis=-1)
    z = jnp.einsum("nhqs,nshk->nqhk", att, v)
    return x + jnp.einsum("nqhk,hkd->nqd", z, params["out"])

  return f, params, draw(N1, t, d), draw(n2, t, d)


# ---------------------------------------------------------------------------------------------
# Pytree params (nested dict + tuple) and a pytree of two outputs {"a": (N, 3), "b": (N, 2, 4)}.

def pytree_outputs(dtype, n2: int = 2) -> Case:
  draw = _Draw(5, dtype)
  params = {
      "trunk": {"w": _glorot(draw, 4, 4, 6), "b": draw(6, scale=0.1)},
      "heads": (_glorot(draw, 6, 6, 3), (_glorot(draw, 6, 6, 8), draw(8, scale=0.1))),
  }

  def f(params, x):
    h = jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])
    wa, (wb, bb) = params["heads"]
    b = jnp.sin(h @ wb + bb).reshape(x.shape[0], 2, 4)
    return {"a": h @ wa, "b": b}

  return f, params, draw(N1, 4), draw(n2, 4)


# ---------------------------------------------------------------------------------------------
# Pytree inputs: a dict of two arrays with different per-example shapes.

def pytree_inputs(dtype, n2: int = 2) -> Case:
  draw = _Draw(6, dtype)
  params = {"wu": _glorot(draw, 3, 3, 5), "wv": _glorot(draw, 4, 2, 2, 5),
            "b": draw(5, scale=0.1), "head": _glorot(draw, 5, 5, 2)}

  def f(params, x):
    h = x["u"] @ params["wu"] + jnp.einsum("nij,ijk->nk", x["v"], params["wv"]) + params["b"]
    return jax.nn.gelu(h) @ params["head"]

  def inputs(n):
    return {"u": draw(n, 3), "v": draw(n, 2, 2)}

  return f, params, inputs(N1), inputs(n2)


CASES: dict[str, Callable[..., Case]] = {
    "mlp_tanh": mlp_tanh,
    "mlp_relu": mlp_relu,
    "cnn": cnn,
    "resnet": resnet,
    "attention": attention,
    "pytree_outputs": pytree_outputs,
    "pytree_inputs": pytree_inputs,
}
