"""neural-tangents as the peer's scripts use it: imported without TensorFlow, one kernel per cell.

Imported by `peer_fcn.py`, `peer_resnet.py` and `peer_dataset.py` inside the peer's venv
(neural-tangents 0.6.5 on JAX 0.4.23; `benchmarks/peer/setup_neural_tangents.sh`): standard
library, numpy, jax and neural_tangents only, never ntk_zoo. neural_tangents is imported only when
a cell asks for its kernel, so ntk_zoo's venv can import the scripts for their job lists.

The package's `__init__` imports `neural_tangents.experimental`, which imports TensorFlow (~6 s
and ~0.5 GB per process, for the TF-interop helpers only); unless a cell asks for `import_tf`,
an empty module takes its place before the import. Nothing `empirical_ntk_fn` uses is affected.
"""

from __future__ import annotations

import sys
import types

import harness
import methods


def import_nt(import_tf: bool):
  if not import_tf and "neural_tangents.experimental" not in sys.modules:
    sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
  import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  return nt


def kernel(f, cell: dict):
  """(nt, kernel, info) for the cell's method (`cell["implementation"]`, ntk_zoo's name).

  kernel: `nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=id)` with the
  peer's id for the method (`methods.PEER_IDS`); info: the cell's first record fields, the
  peer's version and that id, and JAX's (`harness.cell_info`).
  """
  nt = import_nt(cell.get("import_tf", False))
  impl_id = methods.PEER_IDS[cell["implementation"]]
  info = harness.cell_info(getattr(nt, "__version__", harness.package_version("neural-tangents")),
                           peer_implementation_id=impl_id)
  return nt, nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl_id), info
