"""NTK engines: Jacobian contraction, NTK-vector products, structured derivatives, auto."""

from ntk_zoo.ntk.api import Implementation, NonFiniteInputWarning, ntk_fn
from ntk_zoo.ntk.options import NTKOptions, VmapAxes

__all__ = ["Implementation", "NTKOptions", "NonFiniteInputWarning", "VmapAxes", "ntk_fn"]
