"""neural-tangents' side of `resnet.py`: the same ResNet cells, run inside the peer's venv.

Runs under the neural-tangents venv (`benchmarks/peer/setup_neural_tangents.sh`: neural-tangents
0.6.5 on JAX 0.4.23), one cell per process, started by `resnet.py --peer-venv PATH`. It imports
only `common`, `pure_resnet` (from this directory) and `neural_tangents`, never ntk_zoo.

    <peer-venv>/bin/python benchmarks/peer_resnet.py --cell '{"arch": "rn18", "outputs": 10, ...}'

The model is `pure_resnet` (pure JAX, bit-identical parameters and inputs in both venvs);
`nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=1|2|3)`, jitted, timed by
`common.time_fn`; implementation "jacrev" times plain `jax.jacrev` of both inputs on this venv's
JAX (no neural-tangents), a reference for what the JAX/XLA version alone changes. As in
`peer_fcn.py`, `neural_tangents.experimental` (TensorFlow interop, ~6 s and ~0.5 GB per process)
is replaced by an empty module unless the cell asks for `import_tf`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

LIBRARY = "neural-tangents"
META_KEYS = ("benchmark", "library", "model", "implementation", "arch", "n", "image_size",
             "outputs", "dtype")


def _import_nt(import_tf: bool):
  if not import_tf and "neural_tangents.experimental" not in sys.modules:
    sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
  import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  return nt


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in META_KEYS}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    f, params = pure_resnet.model(cell["arch"], cell["outputs"])
    x1, x2 = (jnp.asarray(x) for x in pure_resnet.inputs(cell["n"], cell["image_size"]))
    if cell["implementation"] == "jacrev":
      # Plain JAX on this venv's JAX/XLA, no neural-tangents: a reference for what the JAX
      # version alone changes (same program as resnet.py's jacrev cell).
      import jax  # pylint: disable=g-import-not-at-top
      info = {"library_version": "jax only"}
      info.update(common.jax_info())
      info["num_params"] = pure_resnet.num_params(params)
      jac = jax.jacrev(f)
      budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
      res = common.time_fn(lambda p, a, b: (jac(p, a), jac(p, b)), params, x1, x2,
                           repeats=cell["repeats"], time_budget_s=budget)
      res["jacobian_norm"] = res.pop("kernel_norm")
      res["kernel_shape"] = None
      info.update(res)
      return info
    nt = _import_nt(cell.get("import_tf", False))
    impl_id = common.PEER_IDS[cell["implementation"]]
    info = {"library_version": getattr(nt, "__version__",
                                       common.package_version("neural-tangents")),
            "peer_implementation_id": impl_id}
    info.update(common.jax_info())
    info["num_params"] = pure_resnet.num_params(params)
    kernel = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl_id)
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    info.update(common.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                               repeats=cell["repeats"], time_budget_s=budget))
    return info

  common.cell_main(measure, meta)


def cell_command(cell: dict, python: str) -> list[str]:
  return [python, os.path.abspath(__file__), "--cell", json.dumps(cell)]


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2 or argv[0] != "--cell":
    raise SystemExit(f"usage: {os.path.basename(__file__)} --cell JSON  (started by resnet.py)")
  run_one_cell(json.loads(argv[1]))


if __name__ == "__main__":
  main()
