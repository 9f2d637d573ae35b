"""The `Model` record every zoo architecture and adapter returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ntk_zoo.ntk.typing import PyTree


class InputError(ValueError):
  """Inputs that do not fit a model's `input_spec` (layout, channels, size or dtype)."""


def _fmt_shape(shape) -> str:
  return "(" + ", ".join(str(d) for d in shape) + ")"


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

  def describe(self) -> str:
    """E.g. "(N, 224, 224, 3) float32 (NHWC: channels last)"."""
    layout = " (NHWC: channels last)" if len(self.shape) == 3 else ""
    return f"{_fmt_shape(('N', *self.shape))} {np.dtype(self.dtype).name}{layout}"

  def check(self, x: Any, model: str = "model") -> None:
    """Raises `InputError` for inputs that cannot be right, before anything runs.

    Looks only at static shapes and dtypes (works on tracers; no runtime cost): integer
    inputs to a float model (unpreprocessed images), and for image specs (H, W, C) a
    channel count other than C, naming NCHW when the layout looks transposed. Other shape
    differences (e.g. another image size) are left to the model, which may accept them.
    """
    shape, dtype = tuple(np.shape(x)), getattr(x, "dtype", None)
    if (dtype is not None and np.issubdtype(np.dtype(self.dtype), np.inexact)
        and not np.issubdtype(np.dtype(dtype), np.inexact)):
      raise InputError(
          f"{model} expects {self.describe()} inputs but got dtype {np.dtype(dtype).name} "
          f"(shape {_fmt_shape(shape)}): raw images skip the model's preprocessing. Fix: pass "
          "`model.input_spec.preprocess(images)` (scales uint8 to [0, 1] and normalizes).")
    if len(self.shape) != 3 or len(shape) < 3 or shape[-1] == self.shape[-1]:
      return
    c = self.shape[-1]
    if len(shape) == 4 and shape[1] == c:
      fix = ("It looks like NCHW (channels first): transpose it with "
             "`jnp.transpose(x, (0, 2, 3, 1))`.")
    else:
      fix = f"Fix: pass images with {c} channel(s) on the last axis."
    raise InputError(
        f"{model} expects inputs {self.describe()}, i.e. {c} channel(s) on the last axis; got "
        f"shape {_fmt_shape(shape)} with {shape[-1]} on the last axis. {fix}")

  def mismatch(self, x: Any, model: str = "model") -> str | None:
    """A message if x's per-example shape differs from `shape` (else None)."""
    shape = tuple(np.shape(x))
    if shape[1:] == self.shape or shape == self.shape:
      return None
    return (f"{model} was built for inputs {self.describe()} and got shape "
            f"{_fmt_shape(shape)}. Fix: resize/crop the inputs to {_fmt_shape(self.shape)} per "
            "example, or build the model for this size (zoo models: `image_size=`).")


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

  def __repr__(self) -> str:
    """Short: name, parameter count, input spec, classes (not the arrays)."""
    n_state = int(sum(np.prod(np.shape(s)) for s in jax.tree_util.tree_leaves(self.state)))
    state = f", state={n_state:,} values" if n_state else ""
    return (f"Model(name={self.name!r}, params={self.num_params:,}{state}, "
            f"input={self.input_spec.describe()}, num_classes={self.num_classes})")
