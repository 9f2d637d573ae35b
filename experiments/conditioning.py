"""Conditioning study: do NTK scores at initialization rank NAS-Bench-201 cells by trainability?

    python experiments/conditioning.py                    # CPU-sized: 30 cells, ~21 min on 2 cores
    python experiments/conditioning.py --publish          # + figures/conditioning.png, CONDITIONING.md
    python experiments/conditioning.py --full             # 100 cells, NB201 sizes (accelerator)
    python experiments/conditioning.py --set num_archs=3 --set train_steps=20

`num_archs` cells are sampled from the NB201 space (`ntk_zoo.nas.sample_architectures(n, seed)`).
Ground truth: each cell's network (C = `channels`, `cells_per_stage`, `image_size`² inputs) is
trained from scratch with optax (SGD, Nesterov momentum 0.9, cosine learning rate, weight decay,
cross-entropy, BatchNorm in train mode) for `train_steps` steps of `train_batch` on scikit-learn's
digits (upsampled, 3 channels; 1797 - `test_images` of a fixed shuffle), once per seed in
`train_seeds`; its accuracy on the other `test_images` digits is the target (the final training
loss is reported too).
Scores: `ntk_zoo.nas.score_architectures` under both presets, on the training split:

* `tenas`: TE-NAS's choices (train-mode BN, weights only, Kaiming fan-out, κ by a float32
  eigensolver) at `tenas_channels` (C), `tenas_cells` (N), `tenas_image_size`², batch
  `tenas_batch`, kernel `tenas_kernel`. TE-NAS: C = 3, N = 1, 32², 72, the pseudo-NTK only
  (`--full` keeps all of these but computes the full NTK too); the CPU default differs in
  16² inputs and batch 24 (a train-mode-BN kernel costs N backward passes of the whole batch).
* `full`: the trained network itself, inference-mode BN recalibrated on `full_calibration`
  images, per-example kernels, float64 eigensolver, batch `full_batch`, kernel regression
  tested on `full_test` more.

Each gives κ of the full NTK, κ of the pseudo-NTK, the trace, kernel-regression accuracy and MSE,
#params and FLOPs, over `repeats` inits and batches. Kendall τ and Spearman ρ (scipy.stats) of each
score against the mean test accuracy: of the repeat-mean score, and mean ± std over single
(repeat, training seed) pairs (the seed spread). Both datasets are digits, not CIFAR.

Records: `out_dir/cells.jsonl` (one line per cell, skipped on a rerun with the same config),
`out_dir/runs.jsonl`, `out_dir/conditioning.png`, `out_dir/report.md`; `--publish` also writes
`experiments/figures/conditioning.png` and this study's section of `experiments/CONDITIONING.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
import warnings

import ml_collections
import numpy as np

if __package__ in (None, ""):  # Run as a script: make `experiments` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402  pylint: disable=g-import-not-at-top

NAME = "conditioning"
SCORES = ("kappa_ntk", "kappa_pseudo", "trace", "kr_accuracy", "kr_mse", "params", "flops")
LOG_AXIS = ("kappa_ntk", "kappa_pseudo", "trace", "flops")
PRESET_NAMES = ("tenas", "full")
# Fields that change what a cell's record holds (the others only change the report).
RECORD_FIELDS = ("channels", "cells_per_stage", "image_size", "train_steps", "train_batch",
                 "learning_rate", "weight_decay", "train_seeds", "test_images", "tenas_channels",
                 "tenas_cells", "tenas_image_size", "tenas_batch", "tenas_kernel", "full_batch", "full_test",
                 "full_calibration", "repeats", "score_seed", "implementation",
                 "fast_compile")


def get_config(full: bool = False) -> ml_collections.ConfigDict:
  """CPU-sized (default) or NB201-sized (`full`) study; the fields are the module docstring's."""
  c = ml_collections.ConfigDict()
  c.full = full
  c.publish = False
  c.num_archs = 100 if full else 30
  c.seed = 0  # Sampling of the cells.
  c.archs = [""]  # NB201 strings to study instead of sampling (empty strings are ignored).
  c.channels = 16 if full else 8
  c.cells_per_stage = 5 if full else 1
  c.image_size = 32 if full else 16
  c.train_steps = 2000 if full else 100
  c.train_batch = 128 if full else 32
  c.learning_rate = 0.1 if full else 0.05
  c.weight_decay = 5e-4
  c.train_seeds = [0, 1, 2] if full else [0, 1]
  c.test_images = 500
  c.tenas_channels = 3
  c.tenas_cells = 1
  c.tenas_image_size = 32 if full else 16
  c.tenas_batch = 72 if full else 24
  c.tenas_kernel = "full" if full else "pseudo"
  c.full_batch = 72 if full else 24
  c.full_test = 72 if full else 48
  c.full_calibration = 256 if full else 128
  c.repeats = 3
  c.score_seed = 0
  # Explicit on CPU: JC compiles fastest on these small networks (measured; XLA compile time
  # dominates a cell), `auto` picks by runtime estimates.
  c.implementation = "auto" if full else "jacobian_contraction"
  # XLA's CPU compile of each cell's programs dominates the CPU-sized study; LLVM at -O0 cuts
  # it ~4x (measured 19 s -> 5 s per preset and cell; a training step 6 s -> 2.3 s, running
  # 100 steps in 4.9 s instead of 2.6 s).
  c.fast_compile = not full
  return c


def _split(image_size: int, test_images: int) -> tuple[np.ndarray, ...]:
  """(train images, train labels, test images, test labels): digits at `image_size`², split by a
  fixed shuffle."""
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  images, labels = nas.digits(image_size)
  perm = np.random.default_rng(1234).permutation(len(images))
  test, train = perm[:test_images], perm[test_images:]
  return images[train], labels[train], images[test], labels[test]


def _presets(config) -> dict:
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  tenas = nas.PRESETS["tenas"]
  full = nas.PRESETS["full"]
  return {
      "tenas": dataclasses.replace(
          tenas, kernel=config.tenas_kernel, batch_size=config.tenas_batch, test_size=config.tenas_batch,
          repeats=config.repeats, implementation=config.implementation,
          fast_compile=config.fast_compile,
          network=dataclasses.replace(tenas.network, channels=config.tenas_channels,
                                      cells_per_stage=config.tenas_cells,
                                      image_size=config.tenas_image_size)),
      "full": dataclasses.replace(
          full, batch_size=config.full_batch, test_size=config.full_test,
          calibration_size=config.full_calibration, repeats=config.repeats,
          implementation=config.implementation, fast_compile=config.fast_compile,
          network=_network(config)),
  }


def _network(config):
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  return nas.NetworkConfig(channels=config.channels, cells_per_stage=config.cells_per_stage,
                           num_classes=10, image_size=config.image_size,
                           weight_init="kaiming_fanin")


def train_accuracies(arch: str, config, data) -> list[dict]:
  """Trains `arch` from scratch once per seed in `config.train_seeds`.

  Returns:
    [{"accuracy": test accuracy, "loss": mean training loss of the last 10 steps}] per seed.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top

  x_train, y_train, x_test, y_test = data
  model = nas.build(arch, _network(config))
  fast = {"xla_backend_optimization_level": 0} if config.fast_compile else None
  init = nas.init_fn(model, config.image_size)
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=fast)
  schedule = optax.cosine_decay_schedule(config.learning_rate, config.train_steps)
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(schedule, momentum=0.9, nesterov=True))

  @functools.partial(jax.jit, compiler_options=fast)
  def step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                    mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  results = []
  for seed in config.train_seeds:
    variables = init(jax.random.PRNGKey(10_000 + seed))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state, losses = tx.init(params), []
    rng = np.random.default_rng(seed)
    for _ in range(config.train_steps):  # One compiled step (a scan of them compiles slowly).
      batch = rng.choice(len(x_train), config.train_batch, replace=False)
      params, stats, opt_state, loss = step(params, stats, opt_state, x_train[batch],
                                            y_train[batch])
      losses.append(loss)
    logits = evaluate({"params": params, "batch_stats": stats}, x_test)
    results.append({"accuracy": float(np.mean(np.asarray(logits).argmax(-1) == y_test)),
                    "loss": float(np.mean(np.asarray(losses[-10:])))})
  return results


def _fingerprint(config) -> str:
  return json.dumps({k: config[k] for k in RECORD_FIELDS}, sort_keys=True)


def cell_record(arch: str, config, data, presets) -> dict:
  """Trains and scores one cell."""
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  trained = train_accuracies(arch, config, data)
  seconds = {"train": time.time() - t0}
  scores = {}
  for name, preset in presets.items():
    t0 = time.time()
    x_train, y_train, _, _ = _split(preset.network.image_size, config.test_images)
    scores[name] = nas.score_architectures([arch], preset, images=x_train, labels=y_train,
                                           seed=config.score_seed, progress=False)[0]
    seconds[name] = time.time() - t0
  return {"arch": arch, "config": _fingerprint(config),
          "accuracy": [t["accuracy"] for t in trained], "loss": [t["loss"] for t in trained],
          "scores": scores, "seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Correlations, figure, report.

def _values(rec: dict, preset: str, score: str, repeat: int | None = None) -> float:
  """One score of a cell: the repeat mean, or one repeat's. A κ that is NaN although the kernel
  was computed (0/0: the all-zero kernel of a cell without a path from input to output) is
  returned as inf, the worst conditioning."""
  row = rec["scores"][preset]
  if score in ("params", "flops"):
    return float(row[score])
  value = float(row[f"{score}_mean"] if repeat is None else row["repeats"][score][repeat])
  computed = not (score == "kappa_ntk" and np.isnan(row["repeats"]["kappa_ntk"]).all())
  if score.startswith("kappa") and np.isnan(value) and computed:
    return math.inf
  return value


def correlations(records: list[dict], repeats: int, target: str = "accuracy") -> dict:
  """{preset: {score: {tau, rho, tau_mean, tau_std, rho_mean, rho_std, n}}} against `target`
  ("accuracy": test accuracy, or "loss": final training loss).

  `tau`/`rho`: of the repeat-mean score with the seed-mean target. `*_mean`/`*_std`: over
  every (repeat, training seed) pair of single scores and single targets. Cells whose score is
  NaN are left out (`n` counts the rest); inf ranks last.
  """
  with warnings.catch_warnings():  # Constant or all-NaN scores give NaN; no need to warn.
    warnings.simplefilter("ignore", RuntimeWarning)
    return _correlations(records, repeats, target)


def _correlations(records: list[dict], repeats: int, target: str) -> dict:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  acc = np.array([np.mean(r[target]) for r in records])
  seeds = len(records[0][target]) if records else 0
  out: dict = {}
  for preset in PRESET_NAMES:
    out[preset] = {}
    for score in SCORES:
      x = np.array([_values(r, preset, score) for r in records])
      ok = ~np.isnan(x)
      entry = {"n": int(ok.sum())}
      if ok.sum() >= 3:
        entry["tau"] = float(stats.kendalltau(x[ok], acc[ok]).statistic)
        entry["rho"] = float(stats.spearmanr(x[ok], acc[ok]).statistic)
        taus, rhos = [], []
        for rep in range(repeats):
          xr = np.array([_values(r, preset, score, rep) for r in records])
          for s in range(seeds):
            ys = np.array([r[target][s] for r in records])
            okr = ~np.isnan(xr)
            taus.append(stats.kendalltau(xr[okr], ys[okr]).statistic)
            rhos.append(stats.spearmanr(xr[okr], ys[okr]).statistic)
        entry.update(tau_mean=float(np.nanmean(taus)), tau_std=float(np.nanstd(taus)),
                     rho_mean=float(np.nanmean(rhos)), rho_std=float(np.nanstd(rhos)))
      out[preset][score] = entry
  return out


def _table(corr: dict) -> str:
  head = ("| score | tenas τ | tenas ρ | tenas τ (single runs) | full τ | full ρ "
          "| full τ (single runs) |\n|---|---|---|---|---|---|---|")
  lines = [head]
  for score in SCORES:
    cells = []
    for preset in PRESET_NAMES:
      e = corr[preset][score]
      if "tau" not in e:
        cells += ["—"] * 3
        continue
      cells += [f"{e['tau']:+.2f}", f"{e['rho']:+.2f}",
                f"{e['tau_mean']:+.2f} ± {e['tau_std']:.2f}"]
    lines.append(f"| {score} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(records: list[dict], corr: dict, path: pathlib.Path) -> None:
  """Scatter of every score (columns) of each preset (rows) against test accuracy; cells
  without an input-output path in red."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.ticker import NullFormatter  # pylint: disable=g-import-not-at-top
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  acc = np.array([np.mean(r["accuracy"]) for r in records])
  dead = np.array([not nas.parse_arch(r["arch"]).is_connected for r in records])
  fig, axes = plt.subplots(len(PRESET_NAMES), len(SCORES), figsize=(2.9 * len(SCORES), 6.4),
                           squeeze=False)
  for i, preset in enumerate(PRESET_NAMES):
    for j, score in enumerate(SCORES):
      ax = axes[i, j]
      ax.tick_params(labelsize=7)
      if j == 0:
        ax.set_ylabel("test accuracy")
      x = np.array([_values(r, preset, score) for r in records])
      if np.isnan(x).all():
        ax.set_title(f"{preset}: {score}\nnot computed", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        continue
      finite = np.isfinite(x) & (x > 0) if score in LOG_AXIS else np.isfinite(x)
      for mask, color in ((finite & ~dead, "tab:blue"), (finite & dead, "tab:red")):
        ax.scatter(x[mask], acc[mask], s=12, c=color)
      if score in LOG_AXIS and finite.any():
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
      e = corr[preset][score]
      tau = f"τ={e['tau']:+.2f}" if "tau" in e else "τ=—"
      left = int((~finite).sum())
      ax.set_title(f"{preset}: {score}\n{tau}" + (f" ({left} inf or <= 0: off-axis)" if left else ""),
                   fontsize=8)
  fig.suptitle("red: cells without an input-output path", fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(config, records: list[dict], corr: dict, corr_loss: dict, corr_live: dict,
           runs_md: str) -> str:
  acc = np.array([np.mean(r["accuracy"]) for r in records])
  seed_std = np.mean([np.std(r["accuracy"]) for r in records])
  def bad(v: float) -> bool:
    return not np.isnan(v) and not (np.isfinite(v) and v > 0)
  bad = {p: {s: int(sum(bad(_values(r, p, s)) for r in records))
             for s in ("kappa_ntk", "kappa_pseudo")} for p in PRESET_NAMES}
  return "\n".join([
      f"{len(records)} NB201 cells (sampling seed {config.seed}); ground truth: test accuracy on "
      f"{config.test_images} held-out digits after {config.train_steps} SGD steps of "
      f"{config.train_batch} at C={config.channels}, N={config.cells_per_stage}, "
      f"{config.image_size}² (seeds {list(config.train_seeds)}): mean {acc.mean():.3f}, range "
      f"{acc.min():.3f}–{acc.max():.3f}, mean seed std {seed_std:.3f}.",
      f"Scores: tenas at C={config.tenas_channels}, N={config.tenas_cells}, "
      f"{config.tenas_image_size}², batch {config.tenas_batch}; full at the trained network, "
      f"batch {config.full_batch} (kernel regression tested on {config.full_test} more; tenas's "
      f"on {config.tenas_batch} more); {config.repeats} repeats; implementation "
      f"{config.implementation}. κ not positive-finite (λmin <= 0, κ = inf or negative): "
      f"{bad}.",
      "",
      "Kendall τ / Spearman ρ with test accuracy (τ < 0 for κ means a lower condition number "
      "ranks higher, the TE-NAS hypothesis); single runs: mean ± std over (score repeat, training "
      "seed) pairs.",
      "",
      _table(corr),
      "",
      "The same against the final training loss (mean of the last 10 steps; lower is better, so "
      "the signs flip):",
      "",
      _table(corr_loss),
      "",
      f"Against test accuracy, the {sum(1 for r in records if _connected(r))} cells with a path "
      "from the cell's input to its output only (the others cannot learn: accuracy at chance, "
      "κ = inf or NaN, the smallest trace):",
      "",
      _table(corr_live),
      "",
      "Runs:",
      runs_md,
  ])


def run(config: ml_collections.ConfigDict, out_dir: pathlib.Path) -> dict:
  """Trains and scores `num_archs` cells (resuming from `out_dir/cells.jsonl`); writes the
  figure and report. Returns {"cells", "ran", "correlations", "report", "figure"}."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  load_start = _cli.uptime()
  fingerprint = _fingerprint(config)
  records = _cli.Records(out_dir / "cells.jsonl", key=lambda r: (r["arch"], r["config"]))
  archs = [str(nas.parse_arch(a)) for a in config.archs if a] or [
      str(a) for a in nas.sample_architectures(config.num_archs, config.seed)]
  todo = [a for a in archs if records.get((a, fingerprint)) is None]
  ran = 0
  if todo:
    data = _split(config.image_size, config.test_images)
    presets = _presets(config)
    for arch in tqdm(todo, desc="conditioning", unit="cell"):
      records.add(cell_record(arch, config, data, presets))
      ran += 1
  done = [records.get((a, fingerprint)) for a in archs]
  corr = correlations(done, config.repeats)
  corr_loss = correlations(done, config.repeats, target="loss")
  corr_live = correlations([r for r in done if _connected(r)], config.repeats)
  command = _cli.command(NAME, config, get_config)
  runs_md = _log_run(out_dir, command, load_start, ran)
  text = report(config, done, corr, corr_loss, corr_live, runs_md)
  (out_dir / "report.md").write_text(text + "\n")
  figure = out_dir / "conditioning.png"
  plot(done, corr, figure)
  if config.get("publish"):
    published = _cli.REPO / "experiments" / "figures" / "conditioning.png"
    plot(done, corr, published)
    _publish(text)
  return {"cells": len(done), "ran": ran, "correlations": corr,
          "correlations_loss": corr_loss, "correlations_connected": corr_live, "report": str(out_dir / "report.md"),
          "figure": str(figure)}


def _connected(record: dict) -> bool:
  from ntk_zoo import nas  # pylint: disable=g-import-not-at-top
  return nas.parse_arch(record["arch"]).is_connected


def _log_run(out_dir: pathlib.Path, command: str, load_start: str, ran: int) -> str:
  """Appends this invocation to `out_dir/runs.jsonl`; returns the runs that trained cells."""
  path = out_dir / "runs.jsonl"
  with open(path, "a") as f:
    f.write(json.dumps({"command": command, "load_start": load_start,
                        "load_end": _cli.uptime(), "ran": ran,
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}) + "\n")
  runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  runs = [r for r in runs[:-1] if r["ran"]] + [runs[-1]]
  return "\n".join(f"- `{r['command']}` ({r['date']}; trained and scored {r['ran']} cells): "
                   f"`uptime` at the start {r['load_start']}, at the end {r['load_end']}."
                   for r in runs)


BEGIN, END = f"<!-- {NAME}:begin -->", f"<!-- {NAME}:end -->"


def _publish(text: str) -> None:
  """Replaces this study's section of experiments/CONDITIONING.md (created if missing)."""
  path = _cli.REPO / "experiments" / "CONDITIONING.md"
  old = path.read_text() if path.exists() else "# Conditioning study\n\n"
  section = f"{BEGIN}\n![scores vs accuracy](figures/conditioning.png)\n\n{text}\n{END}"
  if BEGIN in old and END in old:
    new = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END):]
  else:
    new = old.rstrip("\n") + "\n\n" + section + "\n"
  path.write_text(new)


if __name__ == "__main__":
  _cli.main(__doc__, get_config, run, name=NAME)
