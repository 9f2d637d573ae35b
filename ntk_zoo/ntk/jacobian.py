"""Jacobian contraction: Θ = Σ_l J1ˡ J2ˡᵀ with J = ∂f/∂θ instantiated by reverse mode.

Cost (paper Table 2): N·O·[FP] to build the Jacobians plus N²·O²·P for the contraction. The
baseline the other methods are measured against; best only for tiny outputs.

Built on the structured engine's reverse sweep with every parameter cut at itself: both
inputs' backward passes run in lockstep and each leaf's Jacobian block J1ˡ, J2ˡ is contracted
as soon as it is complete and then dropped, so memory is O·(largest leaf + live cotangents)
rather than O·P for all leaves at once; output directions are blocked when even that does
not fit the budget.
"""

from __future__ import annotations

from ntk_zoo.ntk.structured.engine import JACOBIAN as ENGINE

__all__ = ["ENGINE"]
