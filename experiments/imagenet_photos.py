"""Full NTK of a zoo model on real photos: spectrum, κ, what pseudo-NTK and block-diagonal drop.

    python experiments/imagenet_photos.py                 # resnet18, 64², O = 100, 4 photos
    python experiments/imagenet_photos.py --publish       # + figures/ PNG and RESULTS.md
    python experiments/imagenet_photos.py --full          # ResNet-50, 224², O = 1000, 2 photos
    python experiments/imagenet_photos.py --full --set checkpoint=resnet50.safetensors

Photos: the ones bundled in scikit-image / scikit-learn (`ntk_zoo.images.SAMPLE_PHOTOS`;
nothing is downloaded) or image files, centre-cropped, resized, and normalized by the model's
`input_spec`. Weights: the checkpoint in
`config.checkpoint` (torchvision/timm `.safetensors` for ResNets, vit_jax/big_vision `.npz` for
ViT/Mixer, Flax msgpack / Orbax for any zoo model; a 1000-logit file with a smaller
`num_classes` keeps the first O logits), else random init. The `--full` kernel takes ~10 min and
~15 GB on a 2-core CPU (benchmarks/README.md).

Kernel: Θ = `ntk_fn(model.apply, trace_axes=(), vmap_axes=0)(x, None, params)`, (N, N, O, O),
read as the N·O × N·O matrix K[(n, o), (n', o')] = Θ[n, n', o, o']. It is compared with three
cheaper kernels, each the Frobenius-orthogonal projection of K onto a subspace, so the share of
‖K‖²_F each keeps is in [0, 1] (and, K being PSD, so is the share of tr K):

* pseudo-NTK (TE-NAS's "sum of logits"): Θ_ps[n, n'] = Σ_{o,o'} Θ[n, n', o, o'], the NTK of
  Σ_o f_o, N × N. On the N·O-dim space it is P K P with P = I_N ⊗ u uᵀ, u = 1/√O: it keeps
  ‖Θ_ps‖²_F / O² of ‖K‖²_F and tr Θ_ps / O of the trace.
* mean-trace ⊗ I_O (neural-tangents' default `trace_axes=(-1,)`; exact at infinite width):
  Θ̄ = Σ_o Θ[:, :, o, o] / O; keeps O ‖Θ̄‖²_F and the whole trace.
* block diagonal: only the diagonal O × O blocks Θ[n, n] (`diagonal_axes=(0,)`); keeps
  Σ_n ‖Θ[n, n]‖²_F and the whole trace.

Records: `out_dir/cells.jsonl` (one per model; finished ones are skipped on a rerun),
`out_dir/<tag>.npz` (Θ and the spectra), `out_dir/imagenet_photos.png`, `out_dir/report.md`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sys

import ml_collections
import numpy as np

if __package__ in (None, ""):  # Run as a script: make `experiments` importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments import _cli  # noqa: E402  pylint: disable=g-import-not-at-top
from benchmarks import harness, reporting  # noqa: E402  pylint: disable=g-import-not-at-top

NAME = "imagenet_photos"
BEGIN, END = f"<!-- {NAME}:begin -->", f"<!-- {NAME}:end -->"
APPROX = ("pseudo", "mean_trace", "block_diagonal")
LABELS = {"full": "full NTK K", "pseudo": "pseudo-NTK Θ_ps (sum of logits)",
          "mean_trace": "mean-trace ⊗ I_O", "block_diagonal": "diagonal O×O blocks"}


def get_config(full: bool = False) -> ml_collections.ConfigDict:
  """CPU-sized: resnet18 at 64², O = 100, 4 photos; `full`: ResNet-50, 224², O = 1000, 2 photos.

  Fields: `models` (zoo names, one cell each), `image_size`, `num_classes` (O), `photos`
  (`ntk_zoo.images.SAMPLE_PHOTOS` names or image files), `checkpoint` ("" = random init; one
  model only),
  `implementation`, `memory_budget` ("" = ntk_fn's default), `seed` (random init).
  """
  c = ml_collections.ConfigDict()
  c.full = full
  c.publish = False
  c.models = ["resnet18"]
  c.image_size = 64
  c.num_classes = 100
  c.photos = ["astronaut", "chelsea", "coffee", "rocket"]
  c.checkpoint = ""
  c.implementation = "auto"
  c.memory_budget = ""
  c.seed = 0
  if full:
    c.models = ["resnet50"]
    c.image_size = 224
    c.num_classes = 1000
    c.photos = ["astronaut", "chelsea"]
  return c


# ---------------------------------------------------------------------------------------------
# The inputs and the model.

def load_photos(names, size: int) -> np.ndarray:
  """(len(names), size, size, 3) float32 in [0, 1]: bundled photos by name, or image files."""
  from ntk_zoo import images  # pylint: disable=g-import-not-at-top
  out = []
  for name in names:
    if name in images.SAMPLE_PHOTOS:
      out.append(images.fit(images.SAMPLE_PHOTOS[name](), size))
    elif pathlib.Path(name).is_file():
      out.append(images.load_images([name], size)[0])
    else:
      raise ValueError(f"photo {name!r} is neither a bundled photo "
                       f"({', '.join(images.SAMPLE_PHOTOS)}) nor a file")
  return np.stack(out)


def load_model(name: str, config):
  """The zoo model `name`, with `config.checkpoint`'s weights if given, and O logits."""
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models.convert import loading as load_lib  # pylint: disable=g-import-not-at-top
  size, o = config.image_size, config.num_classes
  path = pathlib.Path(config.checkpoint) if config.checkpoint else None
  # torchvision/timm/vit_jax files bring their own head (O is cut below); Flax/Orbax files
  # are loaded into a zoo model built with O logits.
  file_head = (path is not None and path.suffix.lower() in (".safetensors", ".npz")
               and load_lib.family(name)[0] != "other")
  model = ntk_zoo.models.load(name, path, image_size=size, seed=config.seed,
                              num_classes=None if file_head else o)
  if model.num_classes < o:
    raise ValueError(f"{path} has {model.num_classes} logits, fewer than num_classes={o}")
  if model.num_classes > o:  # The NTK of the first O logits: a sub-block of the full one.
    full_apply = model.apply
    model = dataclasses.replace(model, num_classes=o,
                                apply=lambda p, x: full_apply(p, x)[:, :o])
  return model


# ---------------------------------------------------------------------------------------------
# The analysis (numpy, float64).

def as_matrix(theta: np.ndarray) -> np.ndarray:
  """(N, N, O, O) -> the symmetrized N·O × N·O matrix K[(n, o), (n', o')]."""
  n, _, o, _ = theta.shape
  k = np.asarray(theta, np.float64).transpose(0, 2, 1, 3).reshape(n * o, n * o)
  return (k + k.T) / 2


def approximations(theta: np.ndarray) -> dict[str, np.ndarray]:
  """The three cheaper kernels as N·O × N·O matrices (projections of K; see the docstring)."""
  n, _, o, _ = theta.shape
  t = np.asarray(theta, np.float64)
  u = np.full((o, o), 1.0 / o)  # u uᵀ with u = 1/√O.
  pseudo = t.sum((2, 3)) / o  # uᵀ Θ[n, n'] u.
  mean = np.einsum("abii->ab", t) / o
  block = np.zeros_like(t)
  block[np.arange(n), np.arange(n)] = t[np.arange(n), np.arange(n)]
  return {"pseudo": as_matrix(pseudo[:, :, None, None] * u),
          "mean_trace": as_matrix(mean[:, :, None, None] * np.eye(o)),
          "block_diagonal": as_matrix(block)}


def _kappa(eig: np.ndarray) -> float:
  lo, hi = float(eig.min()), float(eig.max())
  return hi / lo if lo > 0 else float("inf")


def analyze(theta: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
  """Spectrum and condition number of K and of each approximation, and what each keeps.

  Returns:
    (summary, spectra): `summary[name]` has `lambda_max`, `lambda_min`, `kappa` (λmax/λmin of
    the kernel as that method would use it: K; Θ_ps (N × N); Θ̄ (N × N); the diagonal blocks),
    and for the approximations `frobenius_kept` (‖A‖²_F / ‖K‖²_F), `trace_kept` (tr A / tr K)
    and `spectral_error` (‖K − A‖₂ / ‖K‖₂); `spectra[name]` are eigenvalues, descending.
  """
  n, _, o, _ = theta.shape
  t = np.asarray(theta, np.float64)
  k = as_matrix(t)
  spectra = {"full": np.linalg.eigvalsh(k)[::-1]}
  own = {"full": spectra["full"],
         "pseudo": np.linalg.eigvalsh((lambda a: (a + a.T) / 2)(t.sum((2, 3))))[::-1],
         "mean_trace": np.linalg.eigvalsh((lambda a: (a + a.T) / 2)(
             np.einsum("abii->ab", t) / o))[::-1],
         "block_diagonal": None}
  blocks = [np.linalg.eigvalsh((t[i, i] + t[i, i].T) / 2) for i in range(n)]
  own["block_diagonal"] = np.sort(np.concatenate(blocks))[::-1]
  fro, tr, norm2 = np.sum(k * k), np.trace(k), spectra["full"][0]
  summary = {}
  for name, a in [("full", k), *approximations(t).items()]:
    s = {"lambda_max": float(own[name][0]), "lambda_min": float(own[name][-1]),
         "kappa": _kappa(own[name])}
    if name != "full":
      spectra[name] = np.linalg.eigvalsh(a)[::-1]
      s["frobenius_kept"] = float(np.sum(a * a) / fro)
      s["trace_kept"] = float(np.trace(a) / tr)
      s["spectral_error"] = float(np.abs(np.linalg.eigvalsh(k - a)).max() / norm2)
    summary[name] = s
  return summary, spectra


# ---------------------------------------------------------------------------------------------
# The run.

def _cell_key(r: dict) -> tuple:
  return (r["model"], r["image_size"], r["num_classes"], tuple(r["photos"]), r["checkpoint"],
          r["implementation"], r["seed"])


def _tag(key: tuple) -> str:
  digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:8]
  return f"{key[0]}_{key[1]}px_O{key[2]}_N{len(key[3])}_{digest}"


def _compute(name: str, config, bar) -> tuple[dict, np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  bar.set_postfix_str(f"{name}: loading")
  model = load_model(name, config)
  x = model.input_spec.preprocess(load_photos(config.photos, config.image_size))
  kernel = ntk_zoo.ntk_fn(model.apply, implementation=config.implementation, trace_axes=(),
                          vmap_axes=0, memory_budget=config.memory_budget or None)
  bar.set_postfix_str(f"{name}: NTK {len(config.photos) * model.num_classes}²")
  res = harness.time_fn(lambda a, p: kernel(a, None, p), x, model.params, repeats=0,
                        min_repeats=0, min_time_s=0.0, keep_output=True)
  theta = np.asarray(jax.device_get(res.pop("_out")))
  d = kernel.last_decision
  res.update(num_params=model.num_params, logits_argmax=np.asarray(
      jax.jit(model.apply)(model.params, x)).argmax(-1).tolist(), jax_version=jax.__version__)
  if d is not None:
    res.update(chosen=d.chosen, plan=str(d.plan))
  return res, theta


def run(config: ml_collections.ConfigDict, out_dir: pathlib.Path) -> dict:
  """Computes (or reuses) each model's kernel, then analyzes, plots and reports.

  Returns:
    A summary: paths written and, per model, κ and the kept shares of each approximation.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if config.checkpoint and len(config.models) != 1:
    raise ValueError("a checkpoint belongs to one model; set models to a single name")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  records = _cli.Records(out_dir / "cells.jsonl", _cell_key)
  load_start = _cli.uptime()
  cells, ran = [], 0
  bar = tqdm(list(config.models), desc=NAME, unit="model", file=sys.stderr)
  for name in bar:
    meta = {"model": name, "image_size": config.image_size, "num_classes": config.num_classes,
            "photos": list(config.photos), "checkpoint": config.checkpoint,
            "implementation": config.implementation, "seed": config.seed}
    tag = _tag(_cell_key(meta))
    rec = records.get(_cell_key(meta))
    if rec is None or not (out_dir / f"{tag}.npz").exists():
      res, theta = _compute(name, config, bar)
      bar.set_postfix_str(f"{name}: spectra")
      summary, spectra = analyze(theta)
      np.savez(out_dir / f"{tag}.npz", theta=theta, **{f"eig_{k}": v for k, v in spectra.items()})
      rec = {**meta, **res, "tag": tag, "analysis": summary, "loadavg_1m": os.getloadavg()[0]}
      records.add(rec)
      ran += 1
    cells.append(rec)
  bar.close()
  figure = plot(cells, out_dir, out_dir / f"{NAME}.png")
  runs = _cli.log_run(out_dir, _cli.command(NAME, config, get_config), load_start, ran)
  report = markdown(cells, config, runs)
  _cli.write_report(out_dir, NAME, figure, report, BEGIN, END, config.publish)
  return {"out_dir": str(out_dir), "figure": str(figure), "report": str(out_dir / "report.md"),
          "ran": ran, "models": {c["model"]: c["analysis"] for c in cells}}


def plot(cells: list[dict], out_dir: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
  """Per model: the spectra (left) and log10 |K| with its O×O block grid (right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(cells), 2, figsize=(11, 4.2 * len(cells)), squeeze=False)
  for row, c in zip(axes, cells):
    data = np.load(out_dir / f"{c['tag']}.npz")
    ax = row[0]
    for name, style in (("full", "k-"), ("block_diagonal", "C1--"), ("mean_trace", "C0:"),
                        ("pseudo", "C3o")):
      eig = data[f"eig_{name}"]
      eig = eig[eig > 1e-12 * eig[0]] if name == "pseudo" else eig  # Its N nonzero ones.
      label = LABELS[name] + (" / O" if name == "pseudo" else "")
      ax.plot(np.arange(1, len(eig) + 1), eig, style, ms=4, label=label)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    a = c["analysis"]
    ax.set_title(f"{c['model']} {c['image_size']}², O={c['num_classes']}, "
                 f"N={len(c['photos'])}: κ(K) = {a['full']['kappa']:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    k = as_matrix(data["theta"])
    ax = row[1]
    im = ax.imshow(np.log10(np.abs(k) + 1e-12 * np.abs(k).max()), cmap="viridis")
    o = c["num_classes"]
    for i in range(1, len(c["photos"])):
      ax.axhline(i * o - 0.5, color="w", lw=0.5)
      ax.axvline(i * o - 0.5, color="w", lw=0.5)
    ax.set_title("log10 |K|, blocks Θ[n, n'] of O×O", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def markdown(cells: list[dict], config, runs: list[dict]) -> str:
  """The report: commands, machine and load, per model the kernel's and approximations' numbers."""
  m = harness.machine_info()
  lines = [
      "Commands (from the repository root; a later one reuses the kernels of earlier ones), "
      "with the machine load (`uptime`) at their start and end:", "",
      _cli.runs_markdown(runs), "",
      f"Machine: {m['cpu_count']} CPUs ({m['cpu_model']}), shared with other jobs.", "",
      f"Photos (bundled with scikit-image): {', '.join(config.photos)}; weights: "
      + (f"`{config.checkpoint}`" if config.checkpoint else f"random init (seed {config.seed})")
      + ".", "",
  ]
  for c in cells:
    a = c["analysis"]
    n, o = len(c["photos"]), c["num_classes"]
    lines += [
        f"**{c['model']}** at {c['image_size']}², O = {o}, N = {n} ({c['num_params']:,} "
        f"parameters): Θ {n}×{n}×{o}×{o}, K {n * o}×{n * o}, by "
        f"{c.get('plan', c.get('chosen', '?'))}; compile {c['compile_s']:.1f} s, run "
        f"{c['first_run_s']:.1f} s, peak RSS +{c.get('peak_mb', 0):.0f} MB.", "",
        "| kernel | size | λmax | λmin | κ = λmax/λmin | ‖·‖²_F kept | trace kept | "
        "‖K − A‖₂ / ‖K‖₂ |",
        "|---|---|---|---|---|---|---|---|"]
    sizes = {"full": f"{n * o}²", "pseudo": f"{n}²", "mean_trace": f"{n}² ⊗ I_{o}",
             "block_diagonal": f"{n} × {o}²"}
    for name in ("full", *APPROX):
      s = a[name]
      kept = [reporting.fmt_num(s[f]) if f in s else "1" for f in
              ("frobenius_kept", "trace_kept")]
      err = reporting.fmt_num(s["spectral_error"]) if "spectral_error" in s else "0"
      lines.append(f"| {LABELS[name]} | {sizes[name]} | {s['lambda_max']:.4g} | "
                   f"{s['lambda_min']:.4g} | {s['kappa']:.4g} | {kept[0]} | {kept[1]} | {err} |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  _cli.main(__doc__, get_config, run, name=NAME)
