"""NTK engines: Jacobian contraction, NTK-vector products, structured derivatives, auto."""

from ntk_zoo.ntk.api import Implementation, NonFiniteInputWarning, ntk_fn
from ntk_zoo.ntk.auto import Decision
from ntk_zoo.ntk.memory import BudgetError, Plan
from ntk_zoo.ntk.options import NTKOptions, VmapAxes
from ntk_zoo.ntk.pseudo import pseudo_ntk_fn

__all__ = ["BudgetError", "Decision", "Implementation", "NTKOptions", "NonFiniteInputWarning",
           "Plan", "VmapAxes", "ntk_fn", "pseudo_ntk_fn"]
