"""Name -> model factory registry: `ntk_zoo.models.get("resnet50", num_classes=10)`."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from ntk_zoo.models.model import Model

# Architecture modules that register factories when imported (imported lazily by `get`/`list`).
_ARCH_MODULES = (
    "ntk_zoo.models.resnet",
    "ntk_zoo.models.wide_resnet",
    "ntk_zoo.models.vit",
    "ntk_zoo.models.mixer",
    "ntk_zoo.models.haiku_resnet",
)

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
  for mod in _ARCH_MODULES:
    if importlib.util.find_spec(mod) is not None:
      importlib.import_module(mod)
  _loaded = True


def list_models() -> list[str]:
  """Names accepted by `get`, sorted."""
  _load_all()
  return sorted(_FACTORIES)


def get(name: str, **kwargs) -> Model:
  """Builds the zoo model `name` (see `list_models()`), e.g. `get("resnet50", num_classes=1000)`.

  Keyword arguments go to the architecture's factory (num_classes, seed, dtype, ...).
  """
  _load_all()
  key = name.lower()
  if key not in _FACTORIES:
    raise KeyError(f"Unknown model {name!r}. Known models: {', '.join(sorted(_FACTORIES))}.")
  return _FACTORIES[key](**kwargs)
