"""The full NTK of every tiny zoo model, and of a small model through each adapter, against the
brute-force reference, for the structured-derivatives and NTK-vector-products engines.

Each case: x1 of 1 example, x2 of 2 (N1 != N2 catches swapped batch axes), float32,
`trace_axes=()` (kernel (1, 2, O, O)), `vmap_axes=0`, the kernel under `jax.jit`. One test per
model runs both engines (the model and its reference are built once); nearly all the time is XLA
compilation. The structured engine must also run without an `UnstructuredPrimitiveWarning` (a
parameter consumed by a primitive it has no rule for).
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import haiku as hk
import jax
import numpy as np
import pytest
from flax import nnx

import ntk_zoo
from ntk_zoo.models.adapters import from_haiku, from_linen, from_nnx
from ntk_zoo.ntk.structured import UnstructuredPrimitiveWarning
from ntk_zoo.ntk.structured import program as structured_program
from ntk_zoo.testing import assert_ntk_close, reference_ntk

IMPLEMENTATIONS = ("structured_derivatives", "ntk_vector_products")
NUM_CLASSES = 4

# Every registered tiny variant, at sizes that keep each case to seconds on CPU (a tiny variant
# registered later is covered with `num_classes=NUM_CLASSES` and its default image size).
TINY_SIZES: dict[str, dict[str, int]] = {
    "resnet_tiny": {"image_size": 16},
    "haiku_resnet_tiny": {"image_size": 16},  # default 224
}
TINY_ZOO = sorted(name for name in ntk_zoo.models.list() if "tiny" in name)

# ---------------------------------------------------------------------------------------------
# Small models through the adapters: conv, normalization, dropout (inactive), pooling, head.

SHAPE = (6, 6, 2)
LINEN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # fast to compile
HAIKU_INIT = hk.initializers.VarianceScaling(1.0, "fan_in", "normal")


def _randomize(tree, seed):
  """Non-trivial BatchNorm statistics: every leaf uniform in (0.5, 1.5)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: np.asarray(rng.uniform(0.5, 1.5, np.shape(a)), a.dtype), tree)


class LinenNet(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> Conv -> LayerNorm -> GELU -> mean pool -> Dense."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3),
                                                                     kernel_init=LINEN_INIT)(x)))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = nn.gelu(nn.LayerNorm()(nn.Conv(5, (2, 2), strides=2, kernel_init=LINEN_INIT)(x)))
    return nn.Dense(NUM_CLASSES, kernel_init=LINEN_INIT)(x.mean(axis=(1, 2)))


class NNXNet(nnx.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> mean pool -> Linear -> tanh -> Linear."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(SHAPE[-1], 4, (3, 3), kernel_init=LINEN_INIT, rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.hidden = nnx.Linear(4, 6, kernel_init=LINEN_INIT, rngs=rngs)
    self.head = nnx.Linear(6, NUM_CLASSES, kernel_init=LINEN_INIT, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(jax.nn.relu(self.bn(self.conv(x))))
    return self.head(jax.nn.tanh(self.hidden(x.mean(axis=(1, 2)))))


@nnx.jit(static_argnums=0)
def _new_nnx_net(seed):
  return NNXNet(nnx.Rngs(seed))


def _haiku_forward(x, is_training: bool):
  """Conv2D -> BatchNorm -> ReLU -> max pool -> flatten -> Linear."""
  x = hk.Conv2D(4, 3, w_init=HAIKU_INIT)(x)
  x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
  x = hk.MaxPool((2, 2, 1), (2, 2, 1), "VALID")(x)
  return hk.Linear(NUM_CLASSES, w_init=HAIKU_INIT)(hk.Flatten()(x))


def _adapter_model(adapter: str):
  x = np.zeros((1, *SHAPE), np.float32)
  if adapter == "linen":
    module = LinenNet()
    variables = jax.jit(lambda k, x: module.init(k, x, train=False))(jax.random.PRNGKey(0), x)
    variables = {**variables, "batch_stats": _randomize(variables["batch_stats"], 1)}
    return from_linen(module, variables, input_spec=SHAPE, apply_kwargs={"train": False})
  if adapter == "nnx":
    net = _new_nnx_net(0)
    net.bn.mean[...] = _randomize(net.bn.mean[...], 2) - 1.0
    net.bn.var[...] = _randomize(net.bn.var[...], 3)
    return from_nnx(net, input_spec=SHAPE)
  net = hk.transform_with_state(_haiku_forward)
  params, state = jax.jit(lambda k, x: net.init(k, x, is_training=True))(
      jax.random.PRNGKey(0), x)
  return from_haiku(net, params, _randomize(state, 4), input_spec=SHAPE,
                    apply_kwargs={"is_training": False})


# ---------------------------------------------------------------------------------------------
# Cases: one test per model runs both engines, so the model and its reference are built once.


def _case(case: str):
  """(model, x1 (1, ...), x2 (2, ...), reference (1, 2, O, O)) of "zoo:<name>" or "adapter:<a>"."""
  kind, name = case.split(":")
  if kind == "zoo":
    model = ntk_zoo.models.get(name, num_classes=NUM_CLASSES, **TINY_SIZES.get(name, {}))
  else:
    model = _adapter_model(name)
  spec = model.input_spec
  x = np.random.default_rng(0).standard_normal((3, *spec.shape)).astype(spec.dtype)
  # The models are per-example (inference mode), so the reference of the 3-example batch against
  # itself holds Θ(x1, x2) as its [:1, 1:] block, at one Jacobian compilation instead of one per
  # batch size.
  reference = reference_ntk(model.apply, x, None, model.params, trace_axes=())[:1, 1:]
  return model, x[:1], x[1:], reference


CASES = [f"zoo:{name}" for name in TINY_ZOO] + [f"adapter:{a}" for a in ("linen", "nnx", "haiku")]


def test_every_tiny_zoo_model_is_a_case():
  assert {"resnet_tiny", "wrn_tiny", "wrn_ntk_tiny", "vit_tiny", "mixer_tiny",
          "haiku_resnet_tiny"} <= set(TINY_ZOO)


def _check(model, x1, x2, reference, implementation: str) -> None:
  """Θ(x1, x2) of `implementation` (under jit) matches `reference`, without unstructured uses."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", UnstructuredPrimitiveWarning)
    kernel_fn = ntk_zoo.ntk_fn(model.apply, implementation=implementation, trace_axes=(),
                               vmap_axes=0)
    kernel = jax.jit(kernel_fn)(x1, x2, model.params)  # one compilation: ~3x faster than eager
  assert kernel.shape == (1, 2, model.num_classes, model.num_classes)
  assert_ntk_close(kernel, reference)
  unstructured = [str(w.message) for w in caught
                  if issubclass(w.category, UnstructuredPrimitiveWarning)]
  assert not unstructured, unstructured


@pytest.mark.parametrize("case", CASES)
def test_full_ntk_matches_reference(case, monkeypatch):
  model, x1, x2, reference = _case(case)
  # The engine warns once per primitive per process; forget earlier warnings so this case's show.
  monkeypatch.setattr(structured_program, "_WARNED", set())
  failures = []
  for implementation in IMPLEMENTATIONS:
    try:
      _check(model, x1, x2, reference, implementation)
    except Exception as e:  # noqa: BLE001  (both engines run; every failure is reported)
      failures.append((implementation, e))
  if failures:
    summary = "\n".join(f"  {impl}: {type(e).__name__}: {e}" for impl, e in failures)
    raise AssertionError(f"{model.name}: full NTK of {len(failures)} engine(s) wrong or "
                         f"failing:\n{summary}") from failures[0][1]
