"""dataset_ntk: stored kernels equal in-memory ones, resume after crashes, sharding, processes."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_zoo
from ntk_zoo.dataset import (IncompleteKernelError, StoreMismatchError, dataset_ntk, load_kernel,
                             plan_tile)
from ntk_zoo.dataset import inputs as inputs_lib

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import worker  # pylint: disable=wrong-import-position

WORKER = pathlib.Path(__file__).parent / "worker.py"
TOL = dict(rtol=1e-5, atol=1e-5)


def mlp():
  def f(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(1), 4)
  params = {"w1": jax.random.normal(k1, (5, 16)) / 2, "w2": jax.random.normal(k2, (16, 3)) / 4}
  return (f, params, np.asarray(jax.random.normal(k3, (11, 5))),
          np.asarray(jax.random.normal(k4, (7, 5))))


@pytest.mark.parametrize("trace_axes", [(), (-1,)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_stored_kernel_equals_in_memory(tmp_path, trace_axes, symmetric):
  f, params, x1, x2 = mlp()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=trace_axes, vmap_axes=0)
  other = None if symmetric else x2
  result = dataset_ntk(kernel, x1, other, params, store=tmp_path / "k", tile=(4, 4) if
                       symmetric else (4, 3), progress=False)
  want = np.asarray(kernel(x1, other, params))
  got = load_kernel(tmp_path / "k")
  assert got.shape == want.shape == result.shape
  np.testing.assert_allclose(np.asarray(got), want, **TOL)
  np.testing.assert_allclose(got[2:9], want[2:9], **TOL)  # Reads a slice of rows.
  n_tiles = 6 if symmetric else 3 * 3  # 3 x 3 tiles; symmetric: the upper triangle only.
  assert (result.computed, result.reused, result.remaining) == (n_tiles, 0, 0)


def test_sequence_source_with_transform(tmp_path):
  f, params, x1, _ = mlp()
  source = [{"image": row / 2.0} for row in x1]  # Like a tfds.data_source.
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  dataset_ntk(kernel, source, None, params, store=tmp_path / "k", tile=5,
              transform=lambda b: b["image"] * 2.0, progress=False)
  np.testing.assert_allclose(np.asarray(load_kernel(tmp_path / "k")),
                             np.asarray(kernel(x1, None, params)), **TOL)


class Crash(Exception):
  pass


def test_resume_after_a_crash_recomputes_no_finished_tile(tmp_path):
  f, params, x1, _ = mlp()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  first = []

  def crash_after_two(i, j):
    first.append((i, j))
    if len(first) == 2:
      raise Crash

  with pytest.raises(Crash):
    dataset_ntk(kernel, x1, None, params, store=tmp_path / "k", tile=3, progress=False,
                on_tile=crash_after_two)
  with pytest.raises(IncompleteKernelError, match="2 of 10 tiles are not done"[2:]):
    load_kernel(tmp_path / "k")
  partial = load_kernel(tmp_path / "k", allow_incomplete=True)
  assert len(partial.missing_tiles()) == 8 and np.isnan(np.asarray(partial)).any()
  second = []
  result = dataset_ntk(kernel, x1, None, params, store=tmp_path / "k", progress=False,
                       on_tile=lambda i, j: second.append((i, j)))
  assert result.tile == (3, 3)  # Resumed with the store's tiling.
  assert not set(first) & set(second) and len(first) + len(second) == 10
  assert (result.computed, result.reused) == (8, 2)
  np.testing.assert_allclose(np.asarray(result.load()), np.asarray(kernel(x1, None, params)),
                             **TOL)


def test_a_tile_without_its_done_mark_is_recomputed(tmp_path):
  f, params, x1, _ = mlp()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  dataset_ntk(kernel, x1, None, params, store=tmp_path / "k", tile=4, progress=False)
  # A job killed between writing tile (0, 1) and marking it: garbage data, no mark.
  (tmp_path / "k" / "done" / "0_1").unlink()
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  arr = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                "path": str(tmp_path / "k" / "kernel")}}).result()
  arr[0:4, 4:8].write(np.full((4, 4, 3, 3), 7.0, np.float32)).result()
  redone = []
  dataset_ntk(kernel, x1, None, params, store=tmp_path / "k", tile=4, progress=False,
              on_tile=lambda i, j: redone.append((i, j)))
  assert redone == [(0, 1)]
  np.testing.assert_allclose(np.asarray(load_kernel(tmp_path / "k")),
                             np.asarray(kernel(x1, None, params)), **TOL)


def test_store_of_another_computation_is_refused(tmp_path):
  f, params, x1, _ = mlp()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  dataset_ntk(kernel, x1, None, params, store=tmp_path / "k", tile=4, progress=False)
  other = jax.tree_util.tree_map(lambda p: p * 2, params)
  with pytest.raises(StoreMismatchError, match="params: stored"):
    dataset_ntk(kernel, x1, None, other, store=tmp_path / "k", tile=4, progress=False)
  with pytest.raises(StoreMismatchError, match="x1: stored"):
    dataset_ntk(kernel, x1 + 1, None, params, store=tmp_path / "k", tile=4, progress=False)
  r = dataset_ntk(kernel, x1, None, other, store=tmp_path / "k", tile=4, progress=False,
                  overwrite=True)
  assert r.computed == 6
  np.testing.assert_allclose(np.asarray(r.load()), np.asarray(kernel(x1, None, other)), **TOL)
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "notes.txt").write_text("mine")
  with pytest.raises(StoreMismatchError, match="not an ntk_zoo kernel store"):
    dataset_ntk(kernel, x1, None, params, store=tmp_path / "junk", tile=4, progress=False)


def test_bad_kernels_and_inputs(tmp_path):
  f, params, x1, _ = mlp()
  with pytest.raises(ValueError, match="vmap_axes=0"):
    dataset_ntk(ntk_zoo.ntk_fn(f, trace_axes=()), x1, None, params, store=tmp_path / "a")
  with pytest.raises(ValueError, match="diagonal_axes"):
    dataset_ntk(ntk_zoo.ntk_fn(f, trace_axes=(), diagonal_axes=(0,), vmap_axes=0), x1, None,
                params, store=tmp_path / "b")
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  with pytest.raises(ValueError, match="square tiles"):
    dataset_ntk(kernel, x1, None, params, store=tmp_path / "c", tile=(4, 2))
  with pytest.raises(ValueError, match="axis 0"):
    inputs_lib.Examples({"a": x1, "b": x1[:3]})
  with pytest.raises(FileNotFoundError, match="no meta.json"):
    load_kernel(tmp_path)


def test_pseudo_ntk_is_the_mean_of_the_blocks(tmp_path):
  f, params, x1, x2 = mlp()
  full = np.asarray(ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)(x1, x2, params))
  pseudo_fn = ntk_zoo.pseudo_ntk_fn(f, vmap_axes=0)
  np.testing.assert_allclose(np.asarray(pseudo_fn(x1, x2, params)), full.mean((2, 3)) * 3, **TOL)
  r = dataset_ntk(pseudo_fn, x1, None, params, store=tmp_path / "p", tile=4, progress=False)
  assert r.shape == (11, 11)
  np.testing.assert_allclose(np.asarray(r.load()), np.asarray(pseudo_fn(x1, None, params)), **TOL)


def test_planned_tile_fits_and_grows_with_cheap_kernels():
  f, params, x1, _ = mlp()
  kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)
  assert plan_tile(kernel, inputs_lib.Examples(x1), None, params) == 11  # Tiny: one tile.
  tight = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0, memory_budget=1500)
  assert plan_tile(tight, inputs_lib.Examples(x1), None, params) < 8  # Outputs > budget / 4.


def _run_worker(store, *args, timeout=240):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen([sys.executable, str(WORKER), str(store), *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240) -> dict:
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def _reference():
  f, params, x = worker.problem()
  return np.asarray(ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0)(x, None, params))


def test_sharded_over_8_devices_equals_one_device(tmp_path):
  report = _finish(_run_worker(tmp_path / "k", "--devices", "8", "--tile", "8"))
  assert report["local_devices"] == 8 and report["computed"] == 6
  np.testing.assert_allclose(np.asarray(load_kernel(tmp_path / "k")), _reference(), **TOL)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_share_one_store(tmp_path):
  port = str(_free_port())
  procs = [_run_worker(tmp_path / "k", "--processes", "2", "--process-id", str(i), "--port", port)
           for i in range(2)]
  reports = [_finish(p) for p in procs]
  assert all(r["processes"] == 2 for r in reports)
  assert sorted(r["computed"] for r in reports) == [7, 8]  # 15 tiles, shared round-robin.
  np.testing.assert_allclose(np.asarray(load_kernel(tmp_path / "k")), _reference(), **TOL)
