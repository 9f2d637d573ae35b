"""A dataset_ntk run in its own process, for the multi-device and multi-process tests.

    python tests/dataset/worker.py STORE [--devices 8] [--process-id I --processes P --port N]

Computes the symmetric full NTK of a small MLP (`problem()`) into STORE, in tiles of --tile (4), and
prints one JSON line with what `dataset_ntk` reported and the devices it used.
"""

import argparse
import json
import os
import sys


def problem():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def f(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w1": jax.random.normal(k1, (5, 16)) / 2, "w2": jax.random.normal(k2, (16, 3)) / 4}
  x = np.asarray(jax.random.normal(k3, (18, 5)))
  return f, params, x


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("store")
  ap.add_argument("--devices", type=int, default=1)
  ap.add_argument("--process-id", type=int)
  ap.add_argument("--processes", type=int)
  ap.add_argument("--port", type=int)
  ap.add_argument("--tile", type=int, default=4)
  args = ap.parse_args()
  if args.devices > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax  # pylint: disable=g-import-not-at-top
  if args.processes:
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.processes,
                               process_id=args.process_id)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  f, params, x = problem()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  r = ntk_zoo.dataset_ntk(kernel, x, None, params, store=args.store, tile=args.tile, progress=False)
  print(json.dumps({"computed": r.computed, "reused": r.reused, "remaining": r.remaining,
                    "local_devices": jax.local_device_count(), "processes": jax.process_count()}))


if __name__ == "__main__":
  main()
