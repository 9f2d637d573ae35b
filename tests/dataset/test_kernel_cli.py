"""`ntk-zoo kernel`: a run killed with SIGKILL and rerun equals an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import ntk_zoo

ARGS = ["kernel", "--model", "resnet_tiny", "--image-size", "8", "--num-classes", "2",
        "--n", "40", "--tile", "4"]
TILES = 55  # 10 x 10 tiles of 4 examples, symmetric: the upper triangle.


def _cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.Popen([sys.executable, "-m", "ntk_zoo", *ARGS, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ok(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  proc = _cli("--out", str(killed))
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    marks = len(os.listdir(killed / "done")) if (killed / "done").is_dir() else 0
    if marks >= 3:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.005)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
  done_at_restart = len(os.listdir(killed / "done"))
  assert 3 <= done_at_restart < TILES

  out = _ok(_cli("--out", str(killed)))
  summary = json.loads((killed / "summary.json").read_text())
  assert summary["reused"] == done_at_restart  # No finished tile recomputed...
  assert summary["computed"] == TILES - done_at_restart  # ... and every other one computed once.
  assert f"{TILES - done_at_restart} computed, {done_at_restart} already done" in out

  _ok(_cli("--out", str(whole)))
  resumed, uninterrupted = ntk_zoo.load_kernel(killed), ntk_zoo.load_kernel(whole)
  assert resumed.shape == (40, 40, 2, 2)
  np.testing.assert_allclose(np.asarray(resumed), np.asarray(uninterrupted), rtol=1e-5, atol=1e-6)


def test_npy_images_asymmetric_and_pseudo(tmp_path):
  from ntk_zoo import cli, images  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)  # Any size: cropped and resized.
  np.save(tmp_path / "x.npy", raw)
  common = ["kernel", "--model", "resnet_tiny", "--image-size", "8", "--num-classes", "2",
            "--data", str(tmp_path / "x.npy"), "--n", "3", "--n2", "2", "--tile", "2"]
  cli.main([*common, "--out", str(tmp_path / "full")])
  cli.main([*common, "--pseudo", "--out", str(tmp_path / "pseudo")])
  model = ntk_zoo.models.get("resnet_tiny", num_classes=2, image_size=8)
  x = model.input_spec.preprocess(np.stack([images.fit(im, (8, 8)) for im in raw]))
  full = ntk_zoo.ntk_fn(model.apply, trace_axes=(), vmap_axes=0)(x[:3], x[3:], model.params)
  np.testing.assert_allclose(np.asarray(ntk_zoo.load_kernel(tmp_path / "full")), full,
                             rtol=1e-4, atol=1e-6)
  pseudo = ntk_zoo.load_kernel(tmp_path / "pseudo")
  assert pseudo.shape == (3, 2)
  np.testing.assert_allclose(np.asarray(pseudo), np.asarray(full).mean((2, 3)) * 2,
                             rtol=1e-4, atol=1e-6)


def test_tfds_data_source(tmp_path):
  """`--data tfds:NAME:SPLIT` reads a `tfds.data_source` (tfds' mock data: no download)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (the test extra)
  from ntk_zoo import cli, images  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    cli.main(["kernel", "--model", "resnet_tiny", "--image-size", "8", "--num-classes", "2",
              "--data", "tfds:mnist:train", "--n", "4", "--tile", "2", "--out",
              str(tmp_path / "k")])
    source = tfds.data_source("mnist", split="train")
    raw = np.stack([images.fit(source[i]["image"], (8, 8)) for i in range(4)])
  model = ntk_zoo.models.get("resnet_tiny", num_classes=2, image_size=8)
  x = model.input_spec.preprocess(raw)
  want = ntk_zoo.ntk_fn(model.apply, trace_axes=(), vmap_axes=0)(x, None, model.params)
  np.testing.assert_allclose(np.asarray(ntk_zoo.load_kernel(tmp_path / "k")), want, rtol=1e-4,
                             atol=1e-6)
