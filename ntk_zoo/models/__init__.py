"""The model zoo: architectures, adapters to pure `(params, x)` functions, checkpoint loaders.

Layout: one module per architecture (`resnet`, `wide_resnet`, `vit`, `mixer`, `haiku_resnet`:
modules, variant table, `create` factory); `layers` and `common` (the layers and the init /
factory plumbing they share); `adapters` (Linen / NNX / Haiku -> `Model`); `convert/` (checkpoint
formats and each family's loaders, re-exported by its architecture module).
"""

from ntk_zoo.models.convert import flax_checkpoints
from ntk_zoo.models.convert.checkpoints import CheckpointFileError, CheckpointMismatchError
from ntk_zoo.models.convert.loading import CheckpointFormatError, load
from ntk_zoo.models.model import InputError, InputSpec, Model
from ntk_zoo.models.registry import get, list_models, register

list = list_models  # noqa: A001  (`ntk_zoo.models.list()` as documented)

__all__ = ["CheckpointFileError", "CheckpointFormatError", "CheckpointMismatchError",
           "InputError", "InputSpec", "Model", "flax_checkpoints", "get", "list", "list_models",
           "load", "register"]
