"""Memory budgets: parsing, the default (a safe fraction of free memory), and the plan record.

Every engine sizes its work to a budget before running anything heavy: it estimates the peak
memory of candidate blockings (output directions, examples) from the traced program and picks
the cheapest that fits. A budget too small for any plan raises `BudgetError`, which names the
smallest budget that would work.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax

# Fraction of free memory the default budget takes: on CPU the host's available RAM is shared
# with everything else on the machine (and XLA's temporaries are not all in our estimate);
# on accelerators, of what XLA's allocator reports free.
CPU_FRACTION = 0.6
DEVICE_FRACTION = 0.85

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6,
          "g": 10 ** 9, "gb": 10 ** 9, "t": 10 ** 12, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


class BudgetError(ValueError):
  """No plan fits the memory budget; `needed` is the smallest budget (bytes) that would work."""

  def __init__(self, message: str, needed: int):
    super().__init__(message)
    self.needed = needed


def parse_budget(budget: int | float | str | None) -> int | None:
  """Bytes from an int/float, or a string such as "8GB", "512 MiB", "1.5e9"; None stays None."""
  if budget is None:
    return None
  if isinstance(budget, bool):
    raise TypeError(f"memory_budget must be bytes or a string like '8GB', got {budget!r}.")
  if isinstance(budget, (int, float)):
    value = float(budget)
  elif isinstance(budget, str):
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", budget)
    if not m or m.group(2).lower() not in _UNITS:
      raise ValueError(
          f"memory_budget {budget!r} is not a size: give bytes (an int) or a string such as "
          "'8GB', '8GiB', '500MB'.")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
  else:
    raise TypeError(f"memory_budget must be bytes or a string like '8GB', got {budget!r}.")
  if value <= 0:
    raise ValueError(f"memory_budget must be positive, got {budget!r}.")
  return int(value)


def _available_host_bytes() -> int:
  try:
    with open("/proc/meminfo", encoding="ascii") as fh:
      for line in fh:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return 8 * 10 ** 9


def default_budget(device: Any | None = None) -> int:
  """A safe fraction of what the device has free now (on CPU: the host's available RAM)."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(DEVICE_FRACTION * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
  return int(CPU_FRACTION * _available_host_bytes())


def resolve(budget: int | float | str | None) -> int:
  parsed = parse_budget(budget)
  return default_budget() if parsed is None else parsed


def fmt_bytes(n: float) -> str:
  for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if abs(n) >= size:
      return f"{n / size:.3g} {unit}"
  return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class Plan:
  """How an engine will compute one kernel call, and what it expects that to cost.

  Attributes:
    method: the implementation ("structured_derivatives", ...).
    blocks: per output leaf, a description of its blocking: for sweep engines
      `(axis, block, n_blocks, split)`: `n_blocks` blocks of `block` directions along that
      per-example output axis (n_blocks = 1: none), and the sweep position where it is split
      (0: not split); for NTK-vector products `(rows_per_chunk,)`.
    peak_bytes: estimated peak memory.
    flops: estimated floating-point operations.
    bytes_written: estimated bytes written by all operations (a time proxy).
    budget: the budget the plan was made for.
    kind: the engine's name for this shape of plan (its estimates are calibrated per kind).
    note: a human-readable summary (routes taken, why blocked).
    measured_bytes: XLA's peak for this plan (temporaries, arguments and outputs, from the
      compiled kernel's memory analysis), when it was checked.
    parts: estimated peaks of the plan's phases, e.g. (("lockstep", b), ("blocks", b)) for a
      split sweep (the verifier uses them to correct the phase that overshoots).
  """
  method: str
  blocks: tuple[tuple[int, ...], ...]
  peak_bytes: float
  flops: float
  bytes_written: float
  budget: int
  kind: str = ""
  note: str = ""
  measured_bytes: int | None = None
  parts: tuple[tuple[str, float], ...] = ()

  def __str__(self) -> str:
    def one(b):
      if len(b) == 1:
        return f"{b[0]} directions per chunk"
      if b[3]:
        return f"split sweep, early part in {b[2]} blocks of {b[1]}"
      return "unblocked" if b[2] == 1 else f"axis {b[0]} in {b[2]} blocks of {b[1]}"

    blocks = ", ".join(one(b) for b in self.blocks)
    return (f"{self.method}: {blocks}; est. {self.flops:.3g} FLOPs, peak "
            f"{fmt_bytes(self.peak_bytes)}"
            + (f" (XLA: {fmt_bytes(self.measured_bytes)})" if self.measured_bytes else "")
            + f" of a {fmt_bytes(self.budget)} budget"
            + (f"; {self.note}" if self.note else ""))
