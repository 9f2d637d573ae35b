"""The experiment scripts end to end at tiny sizes, and the pieces they are built from."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from experiments import _cli, _flops, fcn_scaling, imagenet_models, imagenet_photos  # noqa: E402


def _records(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Shared pieces.

def test_overrides_parse_by_field_type_and_reject_unknown_keys():
  config = fcn_scaling.get_config()
  new = _cli.apply_overrides(config, ["widths=8,16", "timeout_s=5", "skip_wider=false"])
  assert new.widths == [8, 16] and new.timeout_s == 5.0 and new.skip_wider is False
  assert config.widths != [8, 16]  # The original is untouched.
  with pytest.raises(ValueError, match="unknown config key 'widht'"):
    _cli.apply_overrides(config, ["widht=8"])
  with pytest.raises(ValueError, match="KEY=VALUE"):
    _cli.apply_overrides(config, ["widths"])
  assert "--set widths=8,16" in _cli.command("fcn_scaling", new, fcn_scaling.get_config)


def test_unrolled_flops_count_every_loop_iteration():
  def f(x):
    return jax.lax.map(lambda r: r @ r.T, x)

  x = jnp.ones((6, 16, 16))
  rolled = jax.jit(f).lower(x).compile().cost_analysis()["flops"]
  res = _flops.unrolled_flops(f, x)
  assert res["loops"] == 1 and not res["loops_left"]
  assert res["flops_unrolled"] == pytest.approx(6 * rolled, rel=0.05)
  assert res["flops_unrolled"] == pytest.approx(6 * 2 * 16 ** 3, rel=0.05)
  plain = _flops.unrolled_flops(lambda x: x @ x, x[0])
  assert plain["loops"] == 0 and plain["flops_unrolled"] == pytest.approx(2 * 16 ** 3, rel=0.05)


def test_kernel_approximations_are_projections():
  rng = np.random.default_rng(0)
  n, o, p = 3, 4, 50
  jac = rng.standard_normal((n * o, p))
  theta = (jac @ jac.T).reshape(n, o, n, o).transpose(0, 2, 1, 3)
  summary, spectra = imagenet_photos.analyze(theta)
  assert summary["full"]["kappa"] >= 1 and len(spectra["full"]) == n * o
  for name in imagenet_photos.APPROX:
    s = summary[name]
    assert 0 <= s["frobenius_kept"] <= 1 and 0 <= s["trace_kept"] <= 1 + 1e-12, (name, s)
  assert summary["mean_trace"]["trace_kept"] == pytest.approx(1)
  assert summary["block_diagonal"]["trace_kept"] == pytest.approx(1)
  # The pseudo-NTK is the NTK of sum_o f_o: the Gram of the summed Jacobian rows.
  js = jac.reshape(n, o, p).sum(1)
  assert np.allclose(np.sort(spectra["pseudo"])[-n:] * o, np.sort(np.linalg.eigvalsh(js @ js.T)))
  # A kernel of the infinite-width form A ⊗ I_O is kept whole by the mean-trace kernel.
  a = rng.standard_normal((n, n))
  exact = np.einsum("ab,ij->abij", a @ a.T + n * np.eye(n), np.eye(o))
  s = imagenet_photos.analyze(exact)[0]["mean_trace"]
  assert s["frobenius_kept"] == pytest.approx(1) and s["spectral_error"] < 1e-12


# ---------------------------------------------------------------------------------------------
# Fig. 1: FCN scaling.

def _fcn_config(**kw):
  c = fcn_scaling.get_config()
  c.update(n=[2], outputs=[4], widths=[8], depth=3,
           implementations=["structured_derivatives", "ntk_vector_products"], repeats=1,
           min_time_s=0.0, timeout_s=60.0, mem_limit_mb=3000.0, memory_budget_mb=0.0)
  c.update(**kw)
  return c


def test_fcn_scaling_end_to_end_and_resume(tmp_path):
  config = _fcn_config()
  out = fcn_scaling.run(config, tmp_path)
  recs = _records(tmp_path / "cells.jsonl")
  assert out["ran"] == 2 and out["cells"] == {"ok": 2}, recs
  for r in recs:
    assert r["status"] == "ok" and r["median_s"] > 0 and math.isfinite(r["median_s"])
    assert r["xla_flops"] > 0 and math.isfinite(r["xla_flops"])
    assert r["kernel_shape"] == [[2, 2, 4, 4]]
  assert recs[0]["kernel_norm"] == pytest.approx(recs[1]["kernel_norm"], rel=1e-5)
  assert (tmp_path / "fcn_scaling.png").stat().st_size > 10_000
  report = (tmp_path / "report.md").read_text()
  assert "| 2 | 4 | 8 |" in report and "Predictions" in report
  assert out["predictions"]["widest"]["N=2,O=4"]["SD"] == 8
  again = fcn_scaling.run(config, tmp_path)  # Finished cells are skipped.
  assert again["ran"] == 0 and len(_records(tmp_path / "cells.jsonl")) == 2


def test_fcn_scaling_failed_cell_is_a_missing_point(tmp_path):
  # 1 s is less than the cell needs to import JAX: a timeout, and the wider cell is not tried.
  config = _fcn_config(widths=[8, 16], implementations=["structured_derivatives"],
                       timeout_s=1.0)
  out = fcn_scaling.run(config, tmp_path)
  recs = _records(tmp_path / "cells.jsonl")
  assert [(r["width"], r["status"]) for r in recs] == [(8, "timeout")]
  assert out["predictions"]["widest"]["N=2,O=4"]["SD"] is None
  assert "timeout" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# The full NTK on real photos.

def test_imagenet_photos_end_to_end_and_resume(tmp_path):
  config = imagenet_photos.get_config()
  config.update(models=["resnet_tiny"], image_size=16, num_classes=3,
                photos=["astronaut", "chelsea"], implementation="jacobian_contraction")
  out = imagenet_photos.run(config, tmp_path)
  assert out["ran"] == 1
  rec, = _records(tmp_path / "cells.jsonl")
  data = np.load(tmp_path / f"{rec['tag']}.npz")
  theta = data["theta"]
  assert theta.shape == (2, 2, 3, 3) and np.all(np.isfinite(theta))
  k = imagenet_photos.as_matrix(theta)
  assert np.allclose(k, imagenet_photos.as_matrix(theta.transpose(1, 0, 3, 2)), rtol=1e-4,
                     atol=1e-4 * np.abs(k).max())  # Θ(x, x) is symmetric.
  a = out["models"]["resnet_tiny"]
  assert 1 <= a["full"]["kappa"] < math.inf
  assert a["full"]["lambda_max"] == pytest.approx(data["eig_full"][0])
  for name in imagenet_photos.APPROX:
    assert 0 <= a[name]["frobenius_kept"] <= 1 and 0 <= a[name]["trace_kept"] <= 1 + 1e-9
    assert math.isfinite(a[name]["kappa"])
  assert (tmp_path / "imagenet_photos.png").stat().st_size > 10_000
  assert "pseudo-NTK" in (tmp_path / "report.md").read_text()
  assert imagenet_photos.run(config, tmp_path)["ran"] == 0  # Reused from cells.jsonl + npz.


def test_imagenet_photos_rejects_unknown_photo():
  with pytest.raises(ValueError, match="neither a bundled photo"):
    imagenet_photos.load_photos(["no_such_photo"], 16)


def test_imagenet_photos_loads_the_checkpoint_it_is_given(tmp_path):
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models import flax_checkpoints  # pylint: disable=g-import-not-at-top
  trained = ntk_zoo.models.get("resnet_tiny", num_classes=3, image_size=16, seed=1)
  path = tmp_path / "tiny.msgpack"
  flax_checkpoints.save(path, trained)
  config = imagenet_photos.get_config()
  config.update(image_size=16, num_classes=3, checkpoint=str(path))  # seed 0 would differ.
  loaded = imagenet_photos.load_model("resnet_tiny", config)
  for a, b in zip(jax.tree_util.tree_leaves(loaded.params),
                  jax.tree_util.tree_leaves(trained.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.checkpoint = str(tmp_path / "missing.msgpack")
  with pytest.raises(FileNotFoundError, match="missing.msgpack"):
    imagenet_photos.load_model("resnet_tiny", config)


# ---------------------------------------------------------------------------------------------
# Fig. 2 / Fig. 4: ImageNet models.

# A real record of `python benchmarks/imagenet.py --models rn18 --outputs 10 --implementations sd
# --repeats 0` (2-core CPU); the other cells below are variations of it.
_IMAGENET_RECORD = {
    "benchmark": "imagenet", "library": "ntk_zoo", "model": "pure",
    "implementation": "structured_derivatives", "arch": "rn18", "n": 1, "image_size": 224,
    "outputs": 10, "dtype": "float32", "library_version": "0.1.0", "jax_version": "0.10.2",
    "platform": "cpu", "device_kind": "cpu", "num_params": 11181642, "lower_s": 5.545,
    "compile_s": 38.87, "first_run_s": 6.975, "times_s": [], "runs": 0, "median_s": None,
    "min_s": None, "memory_kind": "cpu_peak_rss_delta", "baseline_mb": 330.1,
    "peak_rss_mb": 984.1, "peak_mb": 654.0, "compile_peak_mb": 444.2, "run_peak_mb": 654.0,
    "flops": 108089466880.0, "xla_temp_mb": 176.8, "xla_argument_mb": 43.8, "xla_output_mb": 0.0,
    "xla_generated_code_mb": 0.0, "kernel_norm": 410.1608, "kernel_shape": [[1, 1, 10, 10]],
    "chosen": "structured_derivatives",
    "plan": "structured_derivatives: unblocked; est. 1.05e+11 FLOPs, peak 341 MB of a 13.7 GB "
            "budget", "plan_peak_mb": 325.5, "plan_flops": 104881876500.0, "block_err": 3.2e-07,
    "status": "ok", "cell_wall_s": 169.4, "loadavg_1m": [4.9, 6.1], "child_maxrss_mb": 2929.6,
    "watch_peak_rss_mb": 2911.7,
    "command": "python benchmarks/imagenet.py --models rn18 --outputs 10 --implementations sd "
               "--repeats 0"}


def _imagenet_cell(impl: str, arch: str = "rn18", outputs: int = 10, status: str = "ok",
                   library: str = "ntk_zoo", **kw) -> dict:
  meta = {k: _IMAGENET_RECORD[k] for k in ("benchmark", "model", "n", "image_size", "dtype")}
  meta.update(library=library, implementation=impl, arch=arch, outputs=outputs)
  if status != "ok":  # What `harness.run_cell` records for a killed cell, plus the identity.
    return {**meta, "status": status, "error": "resident memory exceeded the 16000 MB cap",
            "cell_wall_s": 91.0, "loadavg_1m": [3.0, 3.5], "child_maxrss_mb": 16010.0,
            "watch_peak_rss_mb": 16002.0}
  rec = {**_IMAGENET_RECORD, **meta, "chosen": impl,
         "num_params": imagenet_models.params_at(arch, outputs)}
  if library != "ntk_zoo":  # `peer_resnet.py`'s record: neural-tangents in its own venv.
    for k in ("chosen", "plan", "plan_peak_mb", "plan_flops", "block_err"):
      del rec[k]
    rec.update(library_version="0.6.5", jax_version="0.4.23", peer_implementation_id=3)
  return {**rec, **kw}


def test_imagenet_models_tiny(tmp_path):
  sd, vp, jc, auto = "structured_derivatives", "ntk_vector_products", "jacobian_contraction", "auto"
  out_dir, bench = tmp_path / "out", tmp_path / "imagenet.jsonl"
  out_dir.mkdir()
  mine = [_imagenet_cell(sd), _imagenet_cell(vp, first_run_s=20.0),
          _imagenet_cell(jc, status="oom"), _imagenet_cell(auto, chosen=sd),
          _imagenet_cell(sd, "rn50", num_params=23528522, first_run_s=30.0, median_s=25.0),
          _imagenet_cell(jc, "rn50"),
          _imagenet_cell(sd, outputs=100, num_params=11227812, first_run_s=12.0),
          _imagenet_cell(sd, "rn50", outputs=100, status="oom")]
  (out_dir / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
  # As `benchmarks/imagenet.py --peer-venv` writes them, in its own file (`records`).
  bench.write_text(json.dumps(_imagenet_cell(sd, "rn50", library="neural-tangents",
                                             first_run_s=40.0, peak_rss_mb=3000.0)) + "\n"
                   + json.dumps(_imagenet_cell(vp, "rn50", status="timeout")) + "\n")
  config = imagenet_models.get_config()
  assert config.outputs == [10, 100] and 1000 in imagenet_models.get_config(True).outputs
  config.update(models=["rn50", "rn18"], implementations=["sd", "vp", "jc", "auto"],
                peer_implementations=["sd"], plot_only=True, records=[str(bench)])
  out = imagenet_models.run(config, out_dir)
  assert out["ran"] == 0 and out["cells"] == {"ok": 7, "oom": 2, "timeout": 1}, out
  assert (out_dir / "imagenet_models.png").stat().st_size > 10_000
  # Failed cells are missing points; the others are drawn.
  assert out["plotted"]["O=10"] == {"SD": 2, "VP": 1, "JC": 1, "auto": 1,
                                    "SD (neural-tangents)": 1}
  assert out["plotted"]["O=100"]["SD"] == 1
  assert {"rn18 O=10 ntk_zoo JC: oom", "rn50 O=10 ntk_zoo VP: timeout",
          "rn50 O=100 ntk_zoo SD: oom"} <= set(out["missing"])
  report = (out_dir / "report.md").read_text()
  table = [line for line in report.splitlines() if line.startswith("| ")]
  head = [h.strip() for h in table[0].strip("|").split("|")]
  rows = [dict(zip(head, (v.strip() for v in line.strip("|").split("|")))) for line in table[1:]]
  assert [(r["model"], r["params"], r["O"]) for r in rows] == [
      ("rn18", "11.2M", "10"), ("rn50", "23.5M", "10"), ("rn18", "11.2M", "100"),
      ("rn50", "23.7M", "100")]  # By O, then by parameter count.
  rn18, rn50 = rows[0], rows[1]
  assert rn18["JC s / GB"] == "OOM" and rn50["VP s / GB"] == "timeout"
  assert rn18["SD s / GB"] == "6.97¹ / 0.961" and rn18["auto s / GB"].endswith("(SD)")
  assert rn50["SD s / GB"] == "25.0 / 0.961"  # The warm median where there is one.
  assert rn50["SD (neural-tangents) s / GB"] == "40.0¹ / 2.93" and rn18["fastest"] == "SD"
  assert rows[2]["VP s / GB"] == "·" and rows[3]["SD s / GB"] == "OOM"
  # Running the grid: every cell is recorded (or skipped after a failure at a smaller O), so
  # nothing runs; the timeout is reused from `records` and copied into cells.jsonl.
  config.update(plot_only=False, peer_venv="", models=["rn50"], implementations=["sd", "vp"],
                outputs=[10, 100])
  out = imagenet_models.run(config, out_dir)
  assert out["ran"] == 0 and out["cells"] == {"ok": 1, "timeout": 1, "oom": 1, "not run": 1}
  assert "rn50 O=100 ntk_zoo VP: not run" in out["missing"]
  assert [r["status"] for r in _records(out_dir / "cells.jsonl")
          if (r["arch"], r["implementation"]) == ("rn50", vp)] == ["timeout"]
  assert "python experiments/imagenet_models.py --set implementations=sd,vp" in (
      out_dir / "report.md").read_text()
