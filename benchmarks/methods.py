"""The NTK methods the benchmarks compare: their names, short labels and command-line aliases.

Standard library only, so the peer's scripts import it inside the neural-tangents venv too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

OURS, PEER = "ntk_zoo", "neural-tangents"  # The `library` of a record.
JC, VP, SD, AUTO = ("jacobian_contraction", "ntk_vector_products", "structured_derivatives",
                    "auto")
JACREV = "jacrev"  # Baseline: plain `jax.jacrev` of both inputs, no contraction (resnet.py).
NAIVE = "naive"  # Baseline: O single-logit VJPs per input, then their Gram (imagenet.py).
# ntk_zoo's implementation names, in table order, and neural-tangents' integer ids for them.
IMPLEMENTATIONS = (JC, VP, SD, AUTO)
PEER_IDS = {AUTO: 0, JC: 1, VP: 2, SD: 3}
SHORT = {JC: "JC", VP: "VP", SD: "SD", AUTO: "auto", JACREV: "jacrev", NAIVE: "naive"}
ALIASES = {"jc": JC, "jacobian": JC, "vp": VP, "ntk_vp": VP, "sd": SD, "structured": SD,
           "0": AUTO, "1": JC, "2": VP, "3": SD}


def canonical(name: str) -> str:
  """The full name for an alias (case-insensitive); anything else lower-cased."""
  return ALIASES.get(name.lower(), name.lower())


def impl_parser(allowed: Sequence[str] = IMPLEMENTATIONS) -> Callable[[str], list[str]]:
  """An argparse `type`: "jc,sd" -> the full names, each of them one of `allowed`."""

  def parse(s: str) -> list[str]:
    out = []
    for v in s.replace(" ", "").split(","):
      if not v:
        continue
      name = canonical(v)
      if name not in allowed:
        raise argparse.ArgumentTypeError(
            f"unknown implementation {v!r}; use {', '.join(allowed)} (or jc, vp, sd, 0-3)")
      out.append(name)
    return out

  return parse


impl_list = impl_parser()


def int_list(s: str) -> list[int]:
  return [int(v) for v in s.replace(" ", "").split(",") if v]
