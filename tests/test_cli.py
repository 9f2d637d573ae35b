"""The `ntk-zoo` command: an end-to-end run of the console script, one-line errors, photos."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ntk_zoo import cli, images


def _console_script() -> list[str]:
  script = pathlib.Path(sys.executable).with_name("ntk-zoo")
  return [str(script)] if script.exists() else [sys.executable, "-m", "ntk_zoo"]


def test_console_script_end_to_end(tmp_path):
  out = tmp_path / "out"
  # No subcommand: `ntk` is the default; two bundled photos through a tiny ResNet.
  proc = subprocess.run(
      [*_console_script(), "--model", "resnet_tiny", "--n", "2", "--image-size", "16",
       "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
  assert proc.returncode == 0, proc.stderr
  cond = float(re.search(r"condition number: ([0-9.e+]+)", proc.stdout)[1])
  assert re.search(r"^method: \w+", proc.stdout, re.M)
  assert re.search(r"^plan: ", proc.stdout, re.M)
  with np.load(out / "ntk.npz", allow_pickle=False) as z:
    assert z["kernel"].shape == (2, 2, 10, 10)
    eig = z["eigenvalues"]
    assert list(z["images"]) == ["astronaut", "chelsea"]
  assert eig.shape == (20,)
  np.testing.assert_allclose(cond, eig[-1] / eig[0], rtol=1e-3)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["kernel_shape"] == [2, 2, 10, 10]
  assert summary["method"] in cli.IMPLEMENTATIONS
  np.testing.assert_allclose(summary["condition_number"], cond, rtol=1e-3)
  assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(p.name for p in out.iterdir()) == ["ntk.npz", "spectrum.png", "summary.json"]


@pytest.fixture
def bad_files(tmp_path):
  """A non-image `.png`, a file where a directory is needed, and a checkpoint of the wrong
  width for resnet_tiny (a `fc.weight` of the wrong shape, an unexpected key)."""
  from safetensors.numpy import save_file
  (tmp_path / "bad.png").write_text("not an image")
  (tmp_path / "file").write_text("")
  save_file({"fc.weight": np.zeros((10, 7), np.float32), "extra.weight": np.zeros(2, np.float32)},
            str(tmp_path / "wrong.safetensors"))
  return tmp_path


ERRORS = [
    (["ntk", "--model", "resnet_nope"], r"unknown model 'resnet_nope'; valid: .*resnet18"),
    (["--model", "resnet_nope"], r"unknown model"),  # no subcommand: `ntk`
    (["ntk", "--n", "0"], r"--n: must be a positive integer, got 0"),
    (["ntk", "--n", "-2"], r"--n: must be a positive integer, got -2"),
    (["ntk", "--model", "vit_tiny", "--image-size", "3"], r"too small for vit_tiny.*>= 4"),
    (["ntk", "--implementation", "fastest"], r"unknown implementation 'fastest'; valid: auto"),
    (["ntk", "--memory-budget", "lots"], r"--memory-budget: .*not a size"),
    (["ntk", "--model", "resnet_tiny", "--images", "{tmp}/bad.png"],
     r"cannot read .*bad\.png as an image"),
    (["ntk", "--images", "{tmp}/missing.jpg"], r"missing\.jpg: no such file"),
    (["ntk", "--out", "{tmp}/file/sub"], r"output directory .*file/sub is not writable"),
    (["ntk", "--model", "resnet_tiny", "--checkpoint", "{tmp}/wrong.safetensors"],
     r"checkpoint .*wrong\.safetensors does not match the model; missing keys .*"
     r"unexpected keys .*extra\.weight.*shape conflicts .*fc\.weight"),
    (["ntk", "--model", "wrn_tiny", "--checkpoint", "{tmp}/wrong.safetensors"],
     r"no \.safetensors loader for wrn_tiny"),
    (["ntk", "--n", "99"], r"--n 99: there are \d+ bundled photos; pass --images"),
    (["ntk", "--n", "3", "--images", "{tmp}/bad.png"], r"--n 3, but .*bad\.png holds 1 image file"),
    (["reproduce", "nope", "--experiments-dir", "{tmp}"], r"unknown experiment 'nope'"),
    (["reproduce", "--list", "--experiments-dir", "{tmp}/none"], r"no experiments directory"),
    (["frobnicate"], r"unrecognized arguments: frobnicate"),
    (["kernel", "--data", "{tmp}/missing"], r"--data .*missing: no such file or directory"),
    (["kernel", "--data", "{tmp}/file"], r"not a \.npy/\.npz file or a directory of images"),
    (["kernel", "--n", "1800"], r"--data digits holds 1797 examples; --n \+ --n2 asks for 1800"),
    (["kernel", "--data", "tfds:no_such_dataset"],
     r"tensorflow-datasets is not installed|--data tfds:no_such_dataset: "),
    (["kernel", "--model", "resnet_nope"], r"unknown model 'resnet_nope'"),
]


@pytest.mark.parametrize("argv, message", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_one_line_errors(bad_files, capsys, argv, message):
  out = bad_files / "out"
  argv = [a.format(tmp=bad_files) for a in argv]
  if "--out" not in argv:
    argv += ["--out", str(out)] if argv[0] != "frobnicate" else []
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  assert err.startswith("ntk-zoo: error: ") and "Traceback" not in err
  assert re.search(message, err), err
  assert not out.exists()


def test_help_lists_models_and_implementations(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  for word in ("resnet18", "vit_b16", "mixer_b16", "haiku_resnet50", "structured_derivatives",
               "ntk_vector_products", "reproduce"):
    assert word in text


def test_sample_photos_are_real_photos():
  import skimage.data
  photos, names = images.sample_photos(3, (24, 20))
  assert photos.shape == (3, 24, 20, 3) and photos.dtype == np.float32
  assert names == ["astronaut", "chelsea", "coffee"]
  assert 0.0 <= photos.min() and photos.max() <= 1.0
  assert all(p.std() > 0.1 for p in photos)  # textured, not blank or synthetic
  # The fitted astronaut is the photo itself, cropped and shrunk: same mean color.
  original = skimage.data.astronaut()[..., :3].reshape(-1, 3).mean(0) / 255
  np.testing.assert_allclose(photos[0].reshape(-1, 3).mean(0), original, atol=0.05)


def test_image_files_and_directories(tmp_path):
  import skimage.data
  import skimage.io
  (tmp_path / "photos").mkdir()
  skimage.io.imsave(tmp_path / "photos" / "a.png", skimage.data.camera())    # grayscale
  skimage.io.imsave(tmp_path / "photos" / "b.png", skimage.data.logo())      # RGBA
  (tmp_path / "photos" / "notes.txt").write_text("skipped")
  skimage.io.imsave(tmp_path / "c.jpg", skimage.data.coffee())
  files = images.image_files([tmp_path / "photos", tmp_path / "c.jpg"])
  assert [f.name for f in files] == ["a.png", "b.png", "c.jpg"]
  x = images.load_images(files, 16)
  assert x.shape == (3, 16, 16, 3)
  np.testing.assert_allclose(x[0, ..., 0], x[0, ..., 2])  # gray replicated


def test_checkpoint_by_format(tmp_path):
  """A Flax msgpack file loads into its zoo model (other formats: each loader's tests)."""
  import jax
  import ntk_zoo
  from ntk_zoo.models.convert import flax_checkpoints
  saved = ntk_zoo.models.get("resnet_tiny", seed=3)
  flax_checkpoints.save(tmp_path / "w.msgpack", saved)
  model = cli._common.build_model("resnet_tiny", tmp_path / "w.msgpack", None, None)
  for a, b in zip(jax.tree_util.tree_leaves(model.params),
                  jax.tree_util.tree_leaves(saved.params)):
    np.testing.assert_array_equal(a, b)


DUMMY = '''
"""A dummy study: writes one file."""
import ml_collections
from {pkg} import _helper

def get_config(full: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({{"size": 100 if full else 2}})

def run(config, out_dir):
  (out_dir / "table.txt").write_text(str(config.size))
  return {{"size": config.size, "twice": _helper.twice(config.size)}}
'''


@pytest.mark.parametrize("full", [False, True])
def test_reproduce_runs_an_experiment(tmp_path, monkeypatch, capsys, full):
  exps = tmp_path / f"dummy_experiments_{full}"
  exps.mkdir()
  (exps / "dummy.py").write_text(textwrap.dedent(DUMMY.format(pkg=exps.name)))
  (exps / "_helper.py").write_text("def twice(x):\n  return 2 * x\n")
  (exps / "notes.py").write_text('"""Not an experiment: no get_config/run."""\n')
  monkeypatch.setenv(cli.EXPERIMENTS_ENV, str(exps))
  cli.main(["reproduce", "--list"])
  listed = capsys.readouterr().out
  assert listed.split() == ["dummy", "A", "dummy", "study:", "writes", "one", "file."]
  out = tmp_path / "out"
  cli.main(["reproduce", "dummy", "--out", str(out)] + (["--full"] if full else []))
  size = 100 if full else 2
  assert (out / "table.txt").read_text() == str(size)
  assert json.loads((out / "result.json").read_text()) == {"size": size, "twice": 2 * size}


def test_reproduce_finds_the_checkout():
  assert cli.experiments_dir() == pathlib.Path(cli.__file__).resolve().parents[2] / "experiments"


def test_score_bad_architecture_is_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["score", "|bogus~0|"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  assert err.startswith("ntk-zoo score: error: ") and "bogus" in err, err


def test_score_is_listed(capsys):
  with pytest.raises(SystemExit):
    cli.main(["score", "--help"])
  text = capsys.readouterr().out
  assert "--preset" in text and "tenas" in text



def test_broken_pipe_is_quiet(monkeypatch):
  """`ntk-zoo ntk | head -1`: the reader leaves while the command still prints; exit 1, no
  BrokenPipeError traceback."""
  def run(args):
    raise BrokenPipeError(32, "Broken pipe")
  monkeypatch.setattr(cli.score, "run_score", run)
  dup2 = []
  monkeypatch.setattr(cli.os, "dup2", lambda a, b: dup2.append(b))
  with pytest.raises(SystemExit) as e:
    cli.main(["score", "--sample", "1"])
  assert e.value.code == 1 and dup2 == [sys.stdout.fileno()]


def test_matrix_free_spectrum_matches_the_dense_one(tmp_path, capsys):
  common = ["ntk", "--model", "resnet_tiny", "--n", "3", "--image-size", "8", "--num-classes",
            "3"]
  cli.main([*common, "--out", str(tmp_path / "dense")])
  cli.main([*common, "--matrix-free", "--k", "2", "--out", str(tmp_path / "mf")])
  d = json.loads((tmp_path / "dense" / "summary.json").read_text())
  m = json.loads((tmp_path / "mf" / "summary.json").read_text())
  assert m["method"] == "matrix_free" and sorted(p.name for p in (tmp_path / "mf").iterdir()) == [
      "summary.json"]
  np.testing.assert_allclose(m["eigenvalue_max"], d["eigenvalue_max"], rtol=1e-3)
  np.testing.assert_allclose(m["condition_number"], d["condition_number"], rtol=1e-2)
  np.testing.assert_allclose(m["trace"], d["trace"], rtol=1e-4)
  assert "not formed" in capsys.readouterr().out
