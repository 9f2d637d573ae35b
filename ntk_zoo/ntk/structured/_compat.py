"""Re-export of `ntk_zoo.ntk._compat` (the one module touching JAX's jaxpr machinery)."""

from ntk_zoo.ntk._compat import *  # noqa: F401,F403  pylint: disable=wildcard-import,unused-wildcard-import
from ntk_zoo.ntk._compat import inner_jaxpr, is_literal, prims  # noqa: F401
