"""neural-tangents' side of `resnet.py`: the same ResNet cells, run inside the peer's venv.

Runs under the neural-tangents venv (`benchmarks/peer/setup_neural_tangents.sh`: neural-tangents
0.6.5 on JAX 0.4.23), one cell per process, started by `resnet.py --peer-venv PATH`. It imports
only `harness`, `methods`, `peer_nt`, `pure_resnet` (from this directory) and
`neural_tangents`, never ntk_zoo.

    <peer-venv>/bin/python benchmarks/peer_resnet.py --cell '{"arch": "rn18", "outputs": 10, ...}'

The model is `pure_resnet` (pure JAX, bit-identical parameters and inputs in both venvs);
`nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=1|2|3)`, jitted, timed by
`harness.time_fn`; implementation "jacrev" times plain `jax.jacrev` of both inputs on this venv's
JAX (`harness.time_jacobians`, no neural-tangents), a reference for what the JAX/XLA version
alone changes. As in `peer_fcn.py`, `neural_tangents.experimental` (TensorFlow interop) is
replaced by an empty module unless the cell asks for `import_tf`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_nt  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

META_KEYS = ("benchmark", "library", "model", "implementation", "arch", "n", "image_size",
             "outputs", "dtype")


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in META_KEYS}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    f, params = pure_resnet.model(cell["arch"], cell["outputs"])
    x1, x2 = (jnp.asarray(x) for x in pure_resnet.inputs(cell["n"], cell["image_size"]))
    jacrev = cell["implementation"] == methods.JACREV
    if jacrev:  # Plain JAX on this venv's JAX/XLA (the same program as resnet.py's jacrev cell).
      info = harness.cell_info("jax only")
    else:
      _, kernel, info = peer_nt.kernel(f, cell)
    info["num_params"] = pure_resnet.num_params(params)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    if jacrev:
      info.update(harness.time_jacobians(f, params, x1, x2, cell["repeats"], budget))
    else:
      info.update(harness.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                                  repeats=cell["repeats"], time_budget_s=budget))
    return info

  harness.cell_main(measure, meta)


def main(argv=None) -> None:
  harness.cell_entry(run_one_cell, __file__, "resnet.py", argv)


if __name__ == "__main__":
  main()
