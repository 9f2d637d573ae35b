"""The NAS-Bench-201 cell search space: operations, edges, architectures and their strings."""

from __future__ import annotations

import dataclasses

import numpy as np




OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (target node j, source node i) of the 6 edges, in NB201 string order.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_NODES = 4

ARCH_FORMAT = (
    "An architecture is an NB201 string of 3 node groups joined by '+', node j listing its edges "
    "from nodes 0..j-1 as 'op~i', e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
    f"|avg_pool_3x3~0|nor_conv_1x1~1|none~2|', with op one of {', '.join(OPS)}.")


# ---------------------------------------------------------------------------------------------
# Architectures.

@dataclasses.dataclass(frozen=True)
class Architecture:
  """One cell: the op on each of the 6 edges, in `EDGES` order."""
  ops: tuple[str, ...]

  def __post_init__(self):
    if len(self.ops) != len(EDGES) or any(op not in OPS for op in self.ops):
      raise ValueError(f"Architecture needs {len(EDGES)} ops from {OPS}, got {self.ops!r}.")

  def __str__(self) -> str:
    groups = []
    for j in range(1, NUM_NODES):
      groups.append("|" + "|".join(f"{op}~{i}" for (t, i), op in zip(EDGES, self.ops) if t == j)
                    + "|")
    return "+".join(groups)

  def edge_ops(self, node: int) -> list[tuple[int, str]]:
    """(source node, op) of every edge into `node`."""
    return [(i, op) for (t, i), op in zip(EDGES, self.ops) if t == node]

  @property
  def is_connected(self) -> bool:
    """Whether some path of non-'none' edges joins the cell's input to its output. Without
    one the cell outputs zero (plus BN biases) for every input: the network cannot learn."""
    reached = {0}
    for j in range(1, NUM_NODES):
      if any(i in reached and op != "none" for i, op in self.edge_ops(j)):
        reached.add(j)
    return NUM_NODES - 1 in reached


def parse_arch(arch: str | Architecture) -> Architecture:
  """Parses an NB201 architecture string (an `Architecture` passes through).

  Raises:
    ValueError: naming the malformed part and the expected format.
  """
  if isinstance(arch, Architecture):
    return arch
  if not isinstance(arch, str):
    raise ValueError(f"Architecture {arch!r} is not a string. {ARCH_FORMAT}")
  text = arch.strip()
  groups = text.split("+")
  if len(groups) != NUM_NODES - 1:
    raise ValueError(f"Architecture {arch!r} has {len(groups)} node groups, expected "
                     f"{NUM_NODES - 1}. {ARCH_FORMAT}")
  ops = []
  for j, group in enumerate(groups, start=1):
    if len(group) < 2 or group[0] != "|" or group[-1] != "|":
      raise ValueError(f"Architecture {arch!r}: node {j}'s group {group!r} must start and end "
                       f"with '|'. {ARCH_FORMAT}")
    edges = group[1:-1].split("|")
    if len(edges) != j:
      raise ValueError(f"Architecture {arch!r}: node {j} needs {j} edges (from nodes 0..{j - 1}),"
                       f" got {len(edges)} in {group!r}. {ARCH_FORMAT}")
    for i, edge in enumerate(edges):
      op, sep, source = edge.partition("~")
      if not sep or source != str(i):
        raise ValueError(f"Architecture {arch!r}: edge {edge!r} of node {j} should read "
                         f"'<op>~{i}'. {ARCH_FORMAT}")
      if op not in OPS:
        raise ValueError(f"Architecture {arch!r}: unknown op {op!r} on edge {i}->{j}; the ops are "
                         f"{', '.join(OPS)}.")
      ops.append(op)
  return Architecture(tuple(ops))


def sample_architectures(n: int, seed: int = 0) -> list[Architecture]:
  """`n` distinct architectures drawn uniformly from the 5^6 = 15,625 cells (reproducible)."""
  total = len(OPS) ** len(EDGES)
  if not 0 <= n <= total:
    raise ValueError(f"Can sample 0..{total} distinct architectures, asked for {n}.")
  indices = np.random.default_rng(seed).choice(total, size=n, replace=False)
  archs = []
  for index in indices.tolist():
    digits_ = [(index // len(OPS) ** e) % len(OPS) for e in range(len(EDGES))]
    archs.append(Architecture(tuple(OPS[d] for d in digits_)))
  return archs
