"""The `Model` record every zoo architecture and adapter returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

PyTree = Any


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What a model expects as input.

  Attributes:
    shape: shape of ONE example, e.g. (224, 224, 3) (NHWC layout, batch axis excluded).
    dtype: input dtype.
    mean: per-channel mean subtracted by `preprocess` (None: no normalization).
    std: per-channel standard deviation divided by `preprocess`.
  """
  shape: tuple[int, ...]
  dtype: Any = np.float32
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  def preprocess(self, images: np.ndarray | jax.Array) -> jax.Array:
    """Maps uint8 [0, 255] or float [0, 1] images (N, *shape) to the model's input."""
    x = jax.numpy.asarray(images)
    if x.dtype == jax.numpy.uint8:
      x = x.astype(self.dtype) / 255.0
    x = x.astype(self.dtype)
    if self.mean is not None:
      x = (x - jax.numpy.asarray(self.mean, self.dtype)) / jax.numpy.asarray(self.std, self.dtype)
    return x

  def dummy(self, n: int = 1, seed: int = 0) -> jax.Array:
    """A random batch (n, *shape) of valid inputs."""
    return jax.random.normal(jax.random.PRNGKey(seed), (n, *self.shape), self.dtype)


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as a pure function of its differentiated parameters.

  Attributes:
    apply: pure, jit-able `apply(params, x) -> logits` with x of shape (N, *input_spec.shape)
      and logits of shape (N, num_classes). Non-trainable state (BatchNorm statistics, frozen
      collections) is closed over in inference mode.
    params: the pytree `apply` is differentiated with respect to (what the NTK is taken over).
      Linen models (every Linen zoo architecture and `adapters.from_linen`) key it by
      collection, `{"params": tree}`; see `ntk_zoo.models.adapters` for NNX and Haiku.
    state: frozen non-differentiated variables (for inspection and re-binding; already captured
      by `apply`), e.g. `{"batch_stats": tree}` for a Linen model with BatchNorm.
    input_spec: input shape/dtype/preprocessing.
    num_classes: number of logits O.
    name: human-readable name, e.g. "resnet50".
  """
  apply: Callable[[PyTree, Any], Any]
  params: PyTree
  state: PyTree = dataclasses.field(default_factory=dict)
  input_spec: InputSpec = InputSpec(shape=(224, 224, 3))
  num_classes: int = 1000
  name: str = "model"

  @property
  def num_params(self) -> int:
    """Number of scalars in `params` (the differentiated parameters)."""
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(self.params)))

  def __call__(self, x):
    return self.apply(self.params, x)
