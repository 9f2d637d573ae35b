"""The model zoo: architectures, adapters to pure `(params, x)` functions, checkpoint loaders."""

from ntk_zoo.models.loading import load
from ntk_zoo.models.model import InputError, InputSpec, Model
from ntk_zoo.models.registry import get, list_models, register

list = list_models  # noqa: A001  (`ntk_zoo.models.list()` as documented)

__all__ = ["InputError", "InputSpec", "Model", "get", "list", "list_models", "load", "register"]
