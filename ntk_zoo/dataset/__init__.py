"""Dataset-scale kernels: tiled, resumable, on disk, sharded over devices and hosts.

    >>> kernel = ntk_zoo.ntk_fn(model.apply, trace_axes=(), vmap_axes=0)
    >>> result = ntk_zoo.dataset_ntk(kernel, images, None, model.params, store="k.zarr")
    >>> theta = ntk_zoo.load_kernel("k.zarr")            # (N, N, O, O), read on demand
"""

from ntk_zoo.dataset.inputs import Examples
from ntk_zoo.dataset.store import (IncompleteKernelError, StoredKernel, StoreMismatchError,
                                   load_kernel)
from ntk_zoo.dataset.tiles import DatasetKernel, dataset_ntk, default_mesh, plan_tile

__all__ = ["DatasetKernel", "Examples", "IncompleteKernelError", "StoreMismatchError",
           "StoredKernel", "dataset_ntk", "default_mesh", "load_kernel", "plan_tile"]
