"""Name -> model factory registry: `ntk_zoo.models.get("resnet50", num_classes=10)`."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ntk_zoo.models.model import Model

# Architecture modules register their variants' factories when imported; `get`/`list` import
# every module of this package (not its subpackages, e.g. `convert`) the first time, so a new
# architecture is one new module file.
_PACKAGE = "ntk_zoo.models"

_FACTORIES: dict[str, Callable[..., Model]] = {}
_loaded = False


def register(name: str) -> Callable[[Callable[..., Model]], Callable[..., Model]]:
  """Decorator registering `factory(**kwargs) -> Model` under `name` (lower case)."""

  def deco(factory):
    key = name.lower()
    if key in _FACTORIES and _FACTORIES[key] is not factory:
      raise ValueError(f"Model name {name!r} is registered twice.")
    _FACTORIES[key] = factory
    return factory

  return deco


def _load_all() -> None:
  global _loaded
  if _loaded:
    return
  package = importlib.import_module(_PACKAGE)
  for info in pkgutil.iter_modules(package.__path__):
    if not info.ispkg and not info.name.startswith("_"):
      importlib.import_module(f"{_PACKAGE}.{info.name}")
  _loaded = True


def list_models() -> list[str]:
  """Names accepted by `get`, sorted."""
  _load_all()
  return sorted(_FACTORIES)


def get(name: str, **kwargs) -> Model:
  """Builds the zoo model `name` (see `list_models()`), e.g. `get("resnet50", num_classes=1000)`.

  Keyword arguments go to the architecture's factory (num_classes, seed, dtype, ...). Without
  `dtype`, the model is float32, or float64 when `jax_enable_x64` is on (like `jnp` arrays);
  `dtype=jnp.float32` keeps a float32 model under x64.
  """
  _load_all()
  key = name.lower()
  if key not in _FACTORIES:
    raise KeyError(f"Unknown model {name!r}. Known models: {', '.join(sorted(_FACTORIES))}.")
  factory = _FACTORIES[key]
  # Config flags are attributes jax sets at run time: its Config class does not declare them.
  if "dtype" in kwargs or not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
    return factory(**kwargs)
  if "dtype" in inspect.signature(factory).parameters:
    return factory(**kwargs, dtype=jnp.float64)
  return _as_float64(factory(**kwargs))


def _as_float64(model: Model) -> Model:
  """A model whose apply follows its arguments' dtype (Haiku), cast to float64."""
  from ntk_zoo.models.adapters import BoundApply  # pylint: disable=g-import-not-at-top
  if not isinstance(model.apply, BoundApply):
    return model
  cast = lambda tree: jax.tree_util.tree_map(  # noqa: E731
      lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
  state = cast(model.state)
  spec = dataclasses.replace(model.input_spec, dtype=jnp.float64)
  apply = dataclasses.replace(model.apply, state=cast(model.apply.state), input_spec=spec)
  return dataclasses.replace(model, apply=apply, params=cast(model.params), state=state,
                             input_spec=spec)
