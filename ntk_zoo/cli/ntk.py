"""`ntk-zoo ntk`: the full NTK of a zoo model on images, its spectrum and condition number."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import textwrap
import time
from typing import Any

import jax
import numpy as np

import ntk_zoo
from ntk_zoo.ntk import memory
from ntk_zoo.cli import _common as C
from ntk_zoo.cli._common import UsageError


def add_ntk(subparsers) -> None:
  p = subparsers.add_parser(
      "ntk", help="full NTK of a zoo model on images (the default command)",
      description=textwrap.fill(
          "The full N·O × N·O empirical NTK of a zoo model on images: prints the method and "
          "blocking chosen, the time (first call incl. compile, and warm), the shape, the top "
          "and bottom eigenvalues and the condition number; writes DIR/ntk.npz (kernel, "
          "eigenvalues, image names), DIR/summary.json and DIR/spectrum.png. With no "
          f"arguments: {C.DEFAULT_MODEL}, random init, {C.DEFAULT_NUM_CLASSES} logits, on "
          f"{C.DEFAULT_N} photographs bundled with scikit-image at {C.DEFAULT_IMAGE_SIZE}x"
          f"{C.DEFAULT_IMAGE_SIZE} (nothing is downloaded).", 92),
      epilog=C.models_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=C.DEFAULT_MODEL, metavar="NAME",
                 help=f"zoo model (default {C.DEFAULT_MODEL}; names below)")
  p.add_argument("--checkpoint", type=pathlib.Path, metavar="FILE",
                 help="weights to load: torchvision/timm .safetensors (resnet, vit, mixer), "
                      "vit_jax/big_vision .npz (vit, mixer), Flax msgpack file or Orbax "
                      "directory (any model); default: random init")
  p.add_argument("--images", nargs="+", metavar="PATH",
                 help="image files or directories of them (PNG, JPEG, ...); default: the "
                      "photographs bundled with scikit-image")
  p.add_argument("--n", type=C.positive_int, metavar="N",
                 help=f"number of images (default: {C.DEFAULT_N} bundled photos, or every "
                      "image given)")
  p.add_argument("--image-size", type=C.positive_int, metavar="S",
                 help=f"input side; images are center-cropped and resized (default "
                      f"{C.DEFAULT_IMAGE_SIZE}; with --checkpoint, the architecture's own)")
  p.add_argument("--num-classes", type=C.positive_int, metavar="O",
                 help=f"logits O (default {C.DEFAULT_NUM_CLASSES}; with --checkpoint, the "
                      "file's head, or the architecture's default for msgpack/Orbax)")
  p.add_argument("--implementation", default="auto", metavar="IMPL",
                 help=f"one of {', '.join(C.IMPLEMENTATIONS)} (default auto)")
  p.add_argument("--memory-budget", metavar="SIZE",
                 help="peak memory the kernel may use, e.g. 8GB or 512MiB (default: 60%% of "
                      "free RAM; 85%% of free accelerator memory)")
  p.add_argument("--matrix-free", action="store_true",
                 help="never form the N·O x N·O kernel: extreme eigenvalues by Lanczos on "
                      "NTK-vector products (ntk_zoo.ntk_spectrum), exact trace, estimated "
                      "effective rank; writes summary.json only")
  p.add_argument("--k", type=C.positive_int, default=5, metavar="K",
                 help="with --matrix-free: eigenvalues computed at each end (default 5)")
  p.add_argument("--out", type=pathlib.Path, default=C.DEFAULT_OUT, metavar="DIR",
                 help=f"output directory (default ./{C.DEFAULT_OUT})")
  p.set_defaults(run=run_ntk)


def run_ntk(args: argparse.Namespace) -> dict[str, Any]:
  """`ntk-zoo ntk`: computes, prints and writes the NTK; returns the summary."""
  name, implementation, budget, image_size = C.ntk_options(args)
  C.check_writable(args.out)
  files = C.image_files(args)
  model = C.build_model(name, args.checkpoint, args.num_classes, image_size)
  x, names = C.load_images(files, args.n, model.input_spec.shape)
  weights = f"weights {args.checkpoint}" if args.checkpoint else "random init"
  shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
  print(f"model: {model.name} ({model.num_params:,} params, {weights}), {model.num_classes} "
        f"logits; {len(names)} images {tuple(x.shape[1:])}: {shown}")
  if args.matrix_free:
    return _run_matrix_free(args, model, x, names)

  theta, decision, first, warm = full_ntk(model, model.input_spec.preprocess(x),
                                          implementation, budget)
  print(f"method: {decision.chosen}"
        + (" (auto: cheapest plan that fits)" if implementation == "auto" else ""))
  print(f"plan: {decision.plan}")
  alternatives = {k: v for k, v in decision.plans.items() if k != decision.chosen}
  for other, plan in alternatives.items():
    print(f"  vs {other}: {plan if isinstance(plan, str) else C.cost(plan)}")
  print(f"time: first call {first:.2f} s (incl. trace and compile), warm {warm:.3g} s")
  eig = spectrum(theta)
  cond = condition_number(eig)
  n, o = theta.shape[0], theta.shape[2]
  print(f"NTK: shape {theta.shape} = {n * o} x {n * o}, {theta.dtype}")
  print(f"eigenvalues: top {C.fmt(eig[::-1][:5])}; bottom {C.fmt(eig[:5])}")
  print(f"condition number: {cond:.4g}"
        + ("" if np.isfinite(cond) else " (the smallest eigenvalue is <= 0)"))

  summary = {
      "model": model.name, "num_params": model.num_params, "num_classes": model.num_classes,
      "checkpoint": os.fspath(args.checkpoint) if args.checkpoint else None,
      "images": names, "input_shape": list(x.shape), "kernel_shape": list(theta.shape),
      "implementation": implementation, "method": decision.chosen,
      "plan": C.plan_record(decision.plan),
      "alternatives": {k: v if isinstance(v, str) else C.plan_record(v)
                       for k, v in alternatives.items()},
      "time_first_call_s": first, "time_warm_s": warm,
      "eigenvalue_max": float(eig[-1]), "eigenvalue_min": float(eig[0]),
      "condition_number": float(cond) if np.isfinite(cond) else None,
      "trace": float(eig.sum()), "device": str(jax.devices()[0]), "jax": jax.__version__,
  }
  title = f"{model.name}: full NTK on {n} images, {n * o} x {n * o}, κ = {cond:.4g}"
  C.write_outputs(args.out, {
      "ntk.npz": lambda p: np.savez(p, kernel=theta, eigenvalues=eig, images=np.asarray(names)),
      "summary.json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
      "spectrum.png": lambda p: _plot_spectrum(p, eig, title),
  })
  print(f"wrote {args.out / 'ntk.npz'}, summary.json, spectrum.png")
  return summary


def _run_matrix_free(args: argparse.Namespace, model, x: np.ndarray,
                     names: list[str]) -> dict[str, Any]:
  """`ntk-zoo ntk --matrix-free`: the spectrum from NTK-vector products; summary.json only."""
  from ntk_zoo import spectra  # pylint: disable=g-import-not-at-top
  size = len(names) * model.num_classes
  if args.k >= size:
    raise UsageError(f"--k {args.k}: the NTK is {size} x {size}; ask for fewer than {size} "
                     "eigenvalues at each end (or drop --matrix-free)")
  spec = spectra.ntk_spectrum(model.apply, model.params, model.input_spec.preprocess(x),
                              k=args.k, batch_size=min(len(names), 16))
  print(f"method: matrix-free (eigsh on NTK-vector products), {spec.matvecs} products, "
        f"{spec.seconds:.1f} s")
  print(f"NTK: {size} x {size} (not formed)")
  print(f"eigenvalues: top {C.fmt(spec.largest)}; bottom {C.fmt(spec.smallest)}")
  print(f"condition number: {spec.condition_number:.4g}; trace {spec.trace:.6g}; effective rank "
        f"{spec.effective_rank:.4g} (± {100 * spec.frobenius_rel_err:.2g} %)")
  summary = {
      "model": model.name, "num_params": model.num_params, "num_classes": model.num_classes,
      "checkpoint": os.fspath(args.checkpoint) if args.checkpoint else None, "images": names,
      "input_shape": list(x.shape), "method": "matrix_free", "matvecs": spec.matvecs,
      "time_s": spec.seconds, "eigenvalues_top": spec.largest.tolist(),
      "eigenvalues_bottom": spec.smallest.tolist(),
      "eigenvalue_max": float(spec.largest[0]), "eigenvalue_min": float(spec.smallest[0]),
      "condition_number": (float(spec.condition_number)
                           if np.isfinite(spec.condition_number) else None),
      "trace": spec.trace, "effective_rank": spec.effective_rank,
      "device": str(jax.devices()[0]), "jax": jax.__version__,
  }
  C.write_outputs(args.out, {
      "summary.json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n")})
  print(f"wrote {args.out / 'summary.json'}")
  return summary


def full_ntk(model, x, implementation: str = "auto", memory_budget: int | None = None):
  """The full NTK Θ(x, x) of a zoo model, timed.

  Returns:
    (N, N, O, O) numpy kernel, the `Decision` taken, the first call's time (trace, plan,
    compile, run) and a warm call's time, in seconds.
  """
  kernel_fn = ntk_zoo.ntk_fn(model.apply, implementation=implementation, trace_axes=(),
                             vmap_axes=0, memory_budget=memory_budget)
  kernel = jax.jit(lambda x, p: kernel_fn(x, None, p))
  print("computing the full NTK (first call: trace, plan, compile, run) ...", flush=True)
  try:
    t0 = time.perf_counter()
    kernel(x, model.params).block_until_ready()
    first = time.perf_counter() - t0
  except memory.BudgetError as e:
    raise UsageError(f"--memory-budget: {str(e).splitlines()[0]}") from None
  t0 = time.perf_counter()
  theta = kernel(x, model.params).block_until_ready()
  warm = time.perf_counter() - t0
  return np.asarray(theta), kernel_fn.last_decision, first, warm


def spectrum(theta: np.ndarray) -> np.ndarray:
  """Ascending float64 eigenvalues of a full NTK (N, N, O, O) as its N·O × N·O matrix."""
  n, o = theta.shape[0], theta.shape[2]
  mat = np.asarray(theta, np.float64).transpose(0, 2, 1, 3).reshape(n * o, n * o)
  if n * o > 2000:
    print(f"eigendecomposition of the {n * o} x {n * o} matrix ...", flush=True)
  return np.linalg.eigvalsh((mat + mat.T) / 2)


def condition_number(eig: np.ndarray) -> float:
  """λmax / λmin of ascending eigenvalues; inf when λmin <= 0."""
  return float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf")


def _plot_spectrum(path: pathlib.Path, eig: np.ndarray, title: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (no pyplot: Agg)
  fig = Figure(figsize=(6, 4), layout="constrained")
  ax = fig.subplots()
  desc = eig[::-1]
  positive = desc > 0
  ax.semilogy(np.arange(1, len(desc) + 1)[positive], desc[positive], ".-", ms=3)
  ax.set(xlabel="index (descending)", ylabel="eigenvalue", title=title)
  ax.grid(True, which="both", alpha=0.3)
  fig.savefig(path, format="png", dpi=120)
