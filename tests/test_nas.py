"""ntk_zoo.nas: the NB201 search space, its NTK scores, and the conditioning study end to end."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_zoo import nas, testing

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `experiments` lives at the repository root.
  sys.path.insert(0, str(REPO))

TINY = nas.NetworkConfig(channels=2, cells_per_stage=1, image_size=8)
ARCH = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|"


def tiny(preset: str, **kw) -> nas.ScorePreset:
  """A preset's choices on a network small enough for a test."""
  kw = {"network": TINY, "implementation": "jacobian_contraction", "fast_compile": True,
        "batch_size": 4, "test_size": 4, "calibration_size": 8, "repeats": 2, **kw}
  return dataclasses.replace(nas.PRESETS[preset], **kw)


@functools.cache
def _setup(preset: str, kernel: str):
  """(model, BN stats, diff, frozen, jitted kernel) of ARCH under a tiny preset; cached, so
  tests share compilations."""
  p = tiny(preset, kernel=kernel)
  model = nas.build(ARCH, p.network)
  variables = nas.init_fn(model, p.network.image_size)(jax.random.PRNGKey(0))
  diff, frozen = nas.split_params(variables["params"], p.differentiate)
  return model, variables["batch_stats"], diff, frozen, nas.kernel_fn(model, p)


# ---------------------------------------------------------------------------------------------
# The search space.

def test_sampled_architectures_round_trip_and_are_distinct():
  archs = nas.sample_architectures(50, seed=3)
  assert len(set(archs)) == 50
  assert archs == nas.sample_architectures(50, seed=3)
  for a in archs:
    assert nas.parse_arch(str(a)) == a
  assert str(nas.parse_arch(ARCH)) == ARCH
  assert nas.parse_arch(f"  {ARCH}\n").ops[5] == "nor_conv_1x1"
  with pytest.raises(ValueError, match="0..15625"):
    nas.sample_architectures(15626)


@pytest.mark.parametrize("text, message", [
    ("|nor_conv_3x3~0|+|none~0|skip_connect~1|", "2 node groups, expected 3"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 edges"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv' on edge 0->1"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "should read '<op>~0'"),
    ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "must start and end with '|'"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "should read '<op>~0'"),
    (42, "not a string"),
])
def test_bad_architecture_strings_raise_clear_errors(text, message):
  with pytest.raises(ValueError, match=message) as info:
    nas.parse_arch(text)
  assert "NB201 string" in str(info.value) or "the ops are" in str(info.value)


def test_network_builds_with_nb201_shapes():
  model = nas.build(ARCH, nas.NetworkConfig(channels=4, cells_per_stage=2, image_size=16))
  variables = nas.init_fn(model, 16)(jax.random.PRNGKey(0))
  logits = jax.jit(model.apply)(variables, jnp.ones((3, 16, 16, 3)))
  assert logits.shape == (3, 10)
  params = variables["params"]
  assert sorted(k for k in params if k.startswith("Cell")) == [f"Cell_{i}" for i in range(6)]
  # Stages at C, 2C, 4C: the head reads 4C = 16 features.
  assert params["Dense_0"]["kernel"].shape == (16, 10)
  # Only the conv edges have parameters (none / skip / pool have none).
  assert sorted(params["Cell_0"]) == ["edge_0_1", "edge_2_3"]


def test_none_edges_cut_paths():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  cut = nas.parse_arch("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|")
  kept = nas.parse_arch("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|")
  for arch, connected in ((cut, False), (kept, True)):
    cell = nas.Cell(arch)
    variables = cell.init(jax.random.PRNGKey(1), x, train=False)
    out = cell.apply(variables, x, train=False)
    grad = jax.grad(lambda p: cell.apply({**variables, "params": p}, x, train=False).sum())(
        variables["params"])
    conv_grad = grad["edge_0_1"]["Conv_0"]["kernel"]
    assert bool(jnp.any(out != 0)) == connected
    assert bool(jnp.any(conv_grad != 0)) == connected
    assert arch.is_connected == connected
  assert not nas.parse_arch("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"
                            ).is_connected
  assert nas.parse_arch("|none~0|+|none~0|none~1|+|avg_pool_3x3~0|none~1|none~2|").is_connected


# ---------------------------------------------------------------------------------------------
# Kernels.

@pytest.mark.parametrize("preset", ["tenas", "full"])
def test_pseudo_ntk_is_the_sum_over_logits_of_the_full_ntk(preset):
  """Both kernels against brute force (`jax.jacobian` of the whole batch, contracted over every
  parameter, as `testing.reference_ntk` does; compiled at -O0 here to keep the test fast):
  float32, max-normalized error <= 1e-4 (`testing.assert_ntk_close`)."""
  model, stats, diff, frozen, kernel = _setup(preset, "full")
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  apply = nas.make_apply(model, frozen, stats, preset == "tenas")
  jac = jax.jit(jax.jacobian(apply), compiler_options=nas.O0)(diff, x)  # {path: (N, O, *θ)}
  flat = [np.asarray(j).reshape(4, 10, -1) for j in jac.values()]
  ref = sum(np.einsum("aoq,bpq->abop", j, j) for j in flat)
  k = kernel(x, x, diff, frozen, stats)
  pseudo = _setup(preset, "pseudo")[-1](x, x, diff, frozen, stats)
  assert k.shape == (4, 4, 10, 10) and pseudo.shape == (4, 4)
  testing.assert_ntk_close(k, ref)
  testing.assert_ntk_close(pseudo, ref.sum((2, 3)))
  scores = nas.kernel_scores(np.asarray(k))
  assert scores["kappa_pseudo"] == pytest.approx(nas.kernel_scores(np.asarray(pseudo))[
      "kappa_pseudo"], rel=1e-2)


def test_weights_only_leaves_out_biases():
  _, _, diff, frozen, _ = _setup("tenas", "pseudo")
  assert {p[-1] for p in diff} == {"kernel", "scale"}
  assert {p[-1] for p in frozen} == {"bias"}
  _, _, diff_all, frozen_all, _ = _setup("full", "full")
  assert not frozen_all and len(diff_all) == len(diff) + len(frozen)


@pytest.mark.parametrize("preset, coupled", [("tenas", True), ("full", False)])
def test_train_mode_batchnorm_couples_examples(preset, coupled):
  _, stats, diff, frozen, kernel = _setup(preset, nas.PRESETS[preset].kernel)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  x_other = x.at[3].set(jax.random.normal(jax.random.PRNGKey(2), (8, 8, 3)))
  k, k_other = (np.asarray(kernel(a, a, diff, frozen, stats)) for a in (x, x_other))
  change = np.abs(k[:3, :3] - k_other[:3, :3]).max() / np.abs(k).max()
  if coupled:
    assert change > 1e-3
  else:
    assert change < 1e-6


def test_per_example_train_mode_is_refused():
  with pytest.raises(ValueError, match="couples the examples"):
    nas.ScorePreset("x", TINY, batchnorm="train", per_example=True)


def test_kernel_scores_on_known_kernels():
  rng = np.random.default_rng(0)
  n, o = 5, 3
  q = np.linalg.qr(rng.normal(size=(n * o, n * o)))[0]
  eig = np.linspace(1.0, 50.0, n * o)
  gram = (q * eig) @ q.T
  k = gram.reshape(n, o, n, o).transpose(0, 2, 1, 3)
  labels = np.array([0, 1, 2, 0, 1])
  s = nas.kernel_scores(k, k_test=k, labels_train=labels, labels_test=labels, num_classes=o,
                        ridge=1e-9)
  assert s["kappa_ntk"] == pytest.approx(50.0)
  pseudo = k.sum((2, 3))
  ev = np.linalg.eigvalsh(pseudo)
  assert s["kappa_pseudo"] == pytest.approx(ev[-1] / ev[0])
  assert s["trace"] == pytest.approx(eig.mean())
  assert s["kr_accuracy"] == 1.0 and s["kr_mse"] < 1e-12  # Interpolates its training set.
  p = nas.kernel_scores(pseudo, eig_dtype="float32")
  assert np.isnan(p["kappa_ntk"]) and np.isnan(p["kr_accuracy"])
  singular = nas.kernel_scores(np.ones((2, 2, 1, 1)))
  assert singular["kappa_ntk"] == np.inf


def test_a_cell_without_input_path_scores_without_errors():
  """'|none~0|+|none~0|...' networks have a zero kernel (tenas: weights only) or a singular one."""
  zero = np.zeros((3, 3, 2, 2))
  s = nas.kernel_scores(zero, k_test=zero[:2], labels_train=np.array([0, 1, 0]),
                        labels_test=np.array([1, 1]), num_classes=2)
  assert s["kappa_ntk"] == np.inf and s["trace"] == 0 and s["kr_accuracy"] == 0.0
  assert np.isnan(nas.kernel_scores(zero[..., 0, 0], eig_dtype="float32")["kappa_pseudo"])


def _assert_finite_scores(row: dict, preset: str, repeats: int) -> None:
  for name in ("kappa_pseudo", "trace", "kr_accuracy", "kr_mse"):
    assert np.isfinite(row[f"{name}_mean"]) and np.isfinite(row[f"{name}_std"]), name
    assert len(row["repeats"][name]) == repeats
  assert np.isnan(row["kappa_ntk_mean"]) == (preset == "tenas")  # tenas: pseudo-NTK only.
  assert 0 <= row["kr_accuracy_mean"] <= 1
  assert row["params"] > 0 and row["flops"] > 0


def test_scores_are_finite():
  """The tenas preset here; the full one through the command line below."""
  rows = nas.score_architectures([ARCH], tiny("tenas"), progress=False)
  assert [r["arch"] for r in rows] == [ARCH]
  _assert_finite_scores(rows[0], "tenas", repeats=2)


def test_matrix_free_scores_equal_the_dense_ones():
  """Above `dense_max`, κ and trace come from Lanczos on NTK-vector products."""
  dense, = nas.score_architectures([ARCH], tiny("full", repeats=1), progress=False)
  free, = nas.score_architectures([ARCH], tiny("full", repeats=1, dense_max=0), progress=False)
  for name in ("kappa_ntk", "kappa_pseudo", "trace"):
    np.testing.assert_allclose(free[f"{name}_mean"], dense[f"{name}_mean"], rtol=1e-2)
  assert np.isnan(free["kr_accuracy_mean"]) and np.isfinite(dense["kr_accuracy_mean"])


def test_too_few_images_is_a_clear_error():
  with pytest.raises(ValueError, match="draws 16 distinct images per repeat"):
    nas.score_architectures([ARCH], tiny("full"), images=np.zeros((10, 8, 8, 3)),
                            labels=np.zeros(10), progress=False)


def test_cli_main(tmp_path, capsys):
  parser = nas.add_arguments(argparse.ArgumentParser())
  assert nas.main(parser.parse_args(["|bad~0|", "--out", str(tmp_path)])) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("ntk-zoo score: error:") and "\n" not in err
  args = parser.parse_args([ARCH, "--preset", "full", "--channels", "2", "--image-size", "8",
                            "--batch-size", "4", "--repeats", "1", "--implementation", "jc",
                            "--out", str(tmp_path)])
  assert nas.main(args) == 0
  saved = json.loads((tmp_path / "scores.json").read_text())
  assert saved["rows"][0]["arch"] == ARCH and saved["preset"]["network"]["channels"] == 2
  _assert_finite_scores(saved["rows"][0], "full", repeats=1)


# ---------------------------------------------------------------------------------------------
# The conditioning study.

def test_conditioning_runs_end_to_end_and_resumes(tmp_path):
  from experiments import conditioning  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config = conditioning.get_config()
  archs = ["|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|",
           "|nor_conv_1x1~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|",
           "|none~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"]  # Small programs.
  config.update(archs=archs, channels=2, image_size=8, train_steps=3, train_batch=8,
                train_seeds=[0], test_images=50, tenas_channels=2, tenas_image_size=8,
                tenas_batch=4, full_batch=4, full_test=4, full_calibration=8, repeats=2)
  summary = conditioning.run(config, tmp_path)
  assert summary["cells"] == 3 and summary["ran"] == 3
  lines = (tmp_path / "cells.jsonl").read_text().splitlines()
  assert len(lines) == 3
  assert [json.loads(line)["arch"] for line in lines] == archs
  assert set(json.loads(lines[0])["scores"]) == {"tenas", "full"}
  corr = summary["correlations"]
  assert "tau" in corr["full"]["kappa_ntk"] and corr["full"]["kappa_ntk"]["n"] == 3
  assert "tau" not in corr["tenas"]["kappa_ntk"]  # tenas computes the pseudo-NTK only.
  assert (tmp_path / "conditioning.png").stat().st_size > 0
  assert "| kappa_pseudo |" in (tmp_path / "report.md").read_text()
  again = conditioning.run(config, tmp_path)
  assert again["ran"] == 0
  assert json.dumps(again["correlations"], sort_keys=True) == json.dumps(corr, sort_keys=True)
  assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 3
