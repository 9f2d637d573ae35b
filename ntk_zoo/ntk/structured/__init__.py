"""Structured derivatives (Novak et al. 2022, §4): a jaxpr interpreter with per-primitive rules."""

# Rule modules register themselves on import.
from ntk_zoo.ntk.structured import rules_index, rules_linear, rules_views  # noqa: F401
from ntk_zoo.ntk.structured.engine import STRUCTURED, UnstructuredPrimitiveWarning, kernel
from ntk_zoo.ntk.structured.rules import defidentity, defstructure, defview, rules_disabled

__all__ = ["STRUCTURED", "UnstructuredPrimitiveWarning", "defidentity", "defstructure",
           "defview", "kernel", "rules_disabled"]
