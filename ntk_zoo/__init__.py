"""ntk_zoo: fast finite-width empirical neural tangent kernels in JAX, and a model zoo.

    >>> import ntk_zoo
    >>> kernel = ntk_zoo.ntk_fn(apply, trace_axes=(), vmap_axes=0)   # full NTK
    >>> theta = kernel(x1, x2, params)                               # (N1, N2, O, O)
"""

from ntk_zoo import models, spectra, testing
from ntk_zoo.dataset import dataset_ntk, load_kernel
from ntk_zoo.ntk import (BudgetError, Implementation, NonFiniteInputWarning, NTKOptions, VmapAxes,
                         ntk_fn, pseudo_ntk_fn)
from ntk_zoo.spectra import ntk_spectrum


__version__ = "0.1.0"
__all__ = ["BudgetError", "Implementation", "NTKOptions", "NonFiniteInputWarning", "VmapAxes",
           "dataset_ntk", "load_kernel", "models", "ntk_fn", "ntk_spectrum", "pseudo_ntk_fn",
           "spectra", "testing"]
