"""`ntk-zoo`: the command line (`python -m ntk_zoo` is the same command).

    ntk-zoo                               # = ntk-zoo ntk: full NTK of resnet18 on 4 bundled photos
    ntk-zoo ntk --model vit_tiny --images photos/ --n 8 --out results/
    ntk-zoo ntk --model resnet50 --checkpoint resnet50.safetensors --image-size 224
    ntk-zoo score --preset full --sample 5
    ntk-zoo reproduce --list
    ntk-zoo reproduce fig1 --full

Each subcommand is one `add_<name>(subparsers)` function listed in `COMMANDS`: it adds its
parser and sets `run` to a function of the parsed arguments. Bad input ends in one line on
stderr (`ntk-zoo: error: ...`), exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import ntk_zoo
from ntk_zoo import images as images_lib
from ntk_zoo import nas
from ntk_zoo.models import checkpoints, mixer, vit
from ntk_zoo.models import loading as load_lib
from ntk_zoo.ntk import api, memory

PROG = "ntk-zoo"
DEFAULT_MODEL = "resnet18"
DEFAULT_N = 4
DEFAULT_IMAGE_SIZE = 64
DEFAULT_NUM_CLASSES = 10
DEFAULT_OUT = pathlib.Path("ntk_zoo_out")
IMPLEMENTATIONS = ("auto", "jacobian_contraction", "ntk_vector_products",
                   "structured_derivatives")
EXPERIMENTS_ENV = "NTK_ZOO_EXPERIMENTS"


DESCRIPTION = """Finite-width empirical NTKs of the model zoo. With no command, runs `ntk`.

examples:
  ntk-zoo                               # full NTK of resnet18 on 4 bundled photos
  ntk-zoo ntk --model vit_tiny --images photos/ --n 8 --out results/
  ntk-zoo ntk --model resnet50 --checkpoint resnet50.safetensors --image-size 224
  ntk-zoo reproduce --list"""


class UsageError(Exception):
  """Bad input from the user: reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line `argv` (default: `sys.argv[1:]`); with no subcommand, `ntk`.

  Returns:
    0 on success. Bad input raises `SystemExit(2)` after one line on stderr.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  if not argv or argv[0] not in (*parser.commands, "-h", "--help", "--version"):
    argv = ["ntk", *argv]
  args = parser.parse_args(argv)
  try:
    args.run(args)
  except UsageError as e:
    _fail(str(e))
  except BrokenPipeError:  # `ntk-zoo ... | head`: the reader left; no traceback.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(1) from None
  return 0


def build_parser() -> _Parser:
  parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=_models_epilog(),
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=f"ntk_zoo {ntk_zoo.__version__}")
  subparsers = parser.add_subparsers(title="commands", metavar="COMMAND",
                                     parser_class=_Parser)
  for add in COMMANDS:
    add(subparsers)
  parser.commands = tuple(subparsers.choices)
  return parser


class _Parser(argparse.ArgumentParser):
  """argparse, with errors as one line instead of the usage block."""
  commands: tuple[str, ...]  # The top-level parser's subcommand names (set by build_parser).

  def error(self, message: str):
    _fail(f"{message} (see {self.prog} --help)")


def _fail(message: str):
  print(f"{PROG}: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def _models_epilog() -> str:
  models = textwrap.fill(", ".join(ntk_zoo.models.list()), 92, initial_indent="  ",
                         subsequent_indent="  ")
  return (f"models (ntk_zoo.models.list()):\n{models}\n"
          f"implementations:\n  {', '.join(IMPLEMENTATIONS)} (aliases jc, vp, sd)")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


# ---------------------------------------------------------------------------------------------
# ntk-zoo ntk


def add_ntk(subparsers) -> None:
  p = subparsers.add_parser(
      "ntk", help="full NTK of a zoo model on images (the default command)",
      description=textwrap.fill(
          "The full N·O × N·O empirical NTK of a zoo model on images: prints the method and "
          "blocking chosen, the time (first call incl. compile, and warm), the shape, the top "
          "and bottom eigenvalues and the condition number; writes DIR/ntk.npz (kernel, "
          "eigenvalues, image names), DIR/summary.json and DIR/spectrum.png. With no "
          f"arguments: {DEFAULT_MODEL}, random init, {DEFAULT_NUM_CLASSES} logits, on "
          f"{DEFAULT_N} photographs bundled with scikit-image at {DEFAULT_IMAGE_SIZE}x"
          f"{DEFAULT_IMAGE_SIZE} (nothing is downloaded).", 92),
      epilog=_models_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                 help=f"zoo model (default {DEFAULT_MODEL}; names below)")
  p.add_argument("--checkpoint", type=pathlib.Path, metavar="FILE",
                 help="weights to load: torchvision/timm .safetensors (resnet, vit, mixer), "
                      "vit_jax/big_vision .npz (vit, mixer), Flax msgpack file or Orbax "
                      "directory (any model); default: random init")
  p.add_argument("--images", nargs="+", metavar="PATH",
                 help="image files or directories of them (PNG, JPEG, ...); default: the "
                      "photographs bundled with scikit-image")
  p.add_argument("--n", type=_positive_int, metavar="N",
                 help=f"number of images (default: {DEFAULT_N} bundled photos, or every "
                      "image given)")
  p.add_argument("--image-size", type=_positive_int, metavar="S",
                 help=f"input side; images are center-cropped and resized (default "
                      f"{DEFAULT_IMAGE_SIZE}; with --checkpoint, the architecture's own)")
  p.add_argument("--num-classes", type=_positive_int, metavar="O",
                 help=f"logits O (default {DEFAULT_NUM_CLASSES}; with --checkpoint, the "
                      "file's head, or the architecture's default for msgpack/Orbax)")
  p.add_argument("--implementation", default="auto", metavar="IMPL",
                 help=f"one of {', '.join(IMPLEMENTATIONS)} (default auto)")
  p.add_argument("--memory-budget", metavar="SIZE",
                 help="peak memory the kernel may use, e.g. 8GB or 512MiB (default: 60%% of "
                      "free RAM; 85%% of free accelerator memory)")
  p.add_argument("--matrix-free", action="store_true",
                 help="never form the N·O x N·O kernel: extreme eigenvalues by Lanczos on "
                      "NTK-vector products (ntk_zoo.ntk_spectrum), exact trace, estimated "
                      "effective rank; writes summary.json only")
  p.add_argument("--k", type=_positive_int, default=5, metavar="K",
                 help="with --matrix-free: eigenvalues computed at each end (default 5)")
  p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, metavar="DIR",
                 help=f"output directory (default ./{DEFAULT_OUT})")
  p.set_defaults(run=run_ntk)


def run_ntk(args: argparse.Namespace) -> dict[str, Any]:
  """`ntk-zoo ntk`: computes, prints and writes the NTK; returns the summary."""
  name, implementation, budget, image_size = _ntk_options(args)
  _check_writable(args.out)
  files = _image_files(args)
  model = _build_model(name, args.checkpoint, args.num_classes, image_size)
  x, names = _load_images(files, args.n, model.input_spec.shape)
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
    print(f"  vs {other}: {plan if isinstance(plan, str) else _cost(plan)}")
  print(f"time: first call {first:.2f} s (incl. trace and compile), warm {warm:.3g} s")
  eig = spectrum(theta)
  cond = condition_number(eig)
  n, o = theta.shape[0], theta.shape[2]
  print(f"NTK: shape {theta.shape} = {n * o} x {n * o}, {theta.dtype}")
  print(f"eigenvalues: top {_fmt(eig[::-1][:5])}; bottom {_fmt(eig[:5])}")
  print(f"condition number: {cond:.4g}"
        + ("" if np.isfinite(cond) else " (the smallest eigenvalue is <= 0)"))

  summary = {
      "model": model.name, "num_params": model.num_params, "num_classes": model.num_classes,
      "checkpoint": os.fspath(args.checkpoint) if args.checkpoint else None,
      "images": names, "input_shape": list(x.shape), "kernel_shape": list(theta.shape),
      "implementation": implementation, "method": decision.chosen,
      "plan": _plan_record(decision.plan),
      "alternatives": {k: v if isinstance(v, str) else _plan_record(v)
                       for k, v in alternatives.items()},
      "time_first_call_s": first, "time_warm_s": warm,
      "eigenvalue_max": float(eig[-1]), "eigenvalue_min": float(eig[0]),
      "condition_number": float(cond) if np.isfinite(cond) else None,
      "trace": float(eig.sum()), "device": str(jax.devices()[0]), "jax": jax.__version__,
  }
  title = f"{model.name}: full NTK on {n} images, {n * o} x {n * o}, κ = {cond:.4g}"
  _write_outputs(args.out, {
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
  print(f"eigenvalues: top {_fmt(spec.largest)}; bottom {_fmt(spec.smallest)}")
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
  _write_outputs(args.out, {
      "summary.json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n")})
  print(f"wrote {args.out / 'summary.json'}")
  return summary


def _ntk_options(args: argparse.Namespace) -> tuple[str, str, int | None, int | None]:
  """(model name, implementation, budget in bytes, image size), checked."""
  name = args.model.lower()
  if name not in ntk_zoo.models.list():
    raise UsageError(f"unknown model {args.model!r}; valid: {', '.join(ntk_zoo.models.list())}")
  try:
    implementation = api.canonicalize_implementation(args.implementation).value
  except ValueError:
    raise UsageError(f"unknown implementation {args.implementation!r}; valid: "
                     f"{', '.join(IMPLEMENTATIONS)} (aliases jc, vp, sd)") from None
  try:
    budget = memory.parse_budget(args.memory_budget)
  except ValueError as e:
    raise UsageError(f"--memory-budget: {e}") from None
  image_size = args.image_size or (None if args.checkpoint else DEFAULT_IMAGE_SIZE)
  _check_image_size(name, image_size)
  return name, implementation, budget, image_size


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


def _fmt(values: np.ndarray) -> str:
  return " ".join(f"{v:.4g}" for v in values)


def _cost(plan) -> str:
  return f"est. {plan.flops:.3g} FLOPs, peak {memory.fmt_bytes(plan.peak_bytes)}"


def _plan_record(plan) -> dict[str, Any]:
  record = dataclasses.asdict(plan)
  record["summary"] = str(plan)
  return record


def _check_image_size(name: str, image_size: int | None) -> None:
  """Patch models need at least one patch (the models accept smaller images silently)."""
  family, variant = load_lib.family(name)
  if image_size is None or family not in ("vit", "mixer"):
    return
  patch = (vit if family == "vit" else mixer).decode_variant(variant).patch_size
  if image_size < patch:
    raise UsageError(f"--image-size {image_size} is too small for {name}: its patches are "
                     f"{patch}x{patch}, so images need a side >= {patch} (a multiple of {patch} "
                     "uses every pixel)")


def _build_model(name: str, checkpoint: pathlib.Path | None, num_classes: int | None,
                 image_size: int | None):
  """The zoo model `name`, randomly initialized or with `checkpoint`'s weights."""
  if checkpoint is None:
    num_classes = num_classes or DEFAULT_NUM_CLASSES
  try:
    return load_lib.load(name, checkpoint, num_classes=num_classes, image_size=image_size)
  except (FileNotFoundError, load_lib.CheckpointFormatError) as e:
    raise UsageError(str(e)) from None
  except checkpoints.CheckpointMismatchError as e:
    raise UsageError(f"checkpoint {_one_line(str(e))}") from None
  except Exception as e:  # pylint: disable=broad-except  (any failure here is the input's)
    if checkpoint is None:
      raise UsageError(f"cannot build {name}: {_one_line(str(e))}") from None
    raise UsageError(f"cannot load {checkpoint} into {name}: {_one_line(str(e))}") from None


def _image_files(args: argparse.Namespace) -> list[pathlib.Path] | None:
  """The files of --images (None: the bundled photos), checked before any model is built."""
  if not args.images:
    if (args.n or DEFAULT_N) > len(images_lib.SAMPLE_PHOTOS):
      raise UsageError(f"--n {args.n}: there are {len(images_lib.SAMPLE_PHOTOS)} bundled "
                       "photos; pass --images for more")
    return None
  try:
    files = images_lib.image_files(args.images)
  except OSError as e:
    raise UsageError(str(e)) from None
  if args.n and args.n > len(files):
    raise UsageError(f"--n {args.n}, but {' '.join(args.images)} holds {len(files)} image "
                     "file(s)")
  return files[:args.n] if args.n else files


def _load_images(files: list[pathlib.Path] | None, n: int | None,
                 shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
  """(n, *shape) float32 images in [0, 1] and their names."""
  size, channels = (shape[0], shape[1]), shape[2]
  if files is None:
    return images_lib.sample_photos(n or DEFAULT_N, size, channels, progress=True)
  try:
    return images_lib.load_images(files, size, channels, progress=True), [f.name for f in files]
  except ValueError as e:
    raise UsageError(str(e)) from None


def _one_line(message: str, max_items: int = 5) -> str:
  """A multi-line message (e.g. a CheckpointMismatchError's key lists) on one line."""
  parts: list[tuple[str, list[str]]] = []
  for line in message.splitlines():
    text = line.strip()
    if parts and line.startswith("    "):  # an item under a heading
      parts[-1][1].append(text)
    elif text:
      parts.append((text.rstrip("."), []))
  out = []
  for head, items in parts:
    listed = [i for i in items if not i.startswith("... and ")]
    more = ", ..." if len(listed) < len(items) or len(listed) > max_items else ""
    out.append(f"{head} {', '.join(listed[:max_items])}{more}" if items else head)
  return "; ".join(out)


# ---------------------------------------------------------------------------------------------
# Output files: checked before the work, written to a temporary directory, then renamed.


def _check_writable(out: pathlib.Path) -> None:
  """Raises UsageError unless `out` is, or can be created as, a writable directory."""
  existing = out
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise UsageError(f"output directory {out} is not writable: {existing} is not a directory")
  try:
    tempfile.TemporaryDirectory(dir=existing).cleanup()
  except OSError as e:
    raise UsageError(f"output directory {out} is not writable: {e.strerror or e}") from None


def _write_outputs(out: pathlib.Path, writers: dict[str, Callable[[pathlib.Path], Any]]) -> None:
  """Writes every file of `writers` ({name: write(path)}) into `out`, or none of them."""
  created = not out.exists()
  try:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ntk_zoo-", dir=out) as tmp:
      for name, write in writers.items():
        write(pathlib.Path(tmp) / name)
      for name in writers:
        os.replace(pathlib.Path(tmp) / name, out / name)
  except OSError as e:
    if created and out.is_dir() and not any(out.iterdir()):
      out.rmdir()
    raise UsageError(f"cannot write to {out}: {e.strerror or e}") from None


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


# ---------------------------------------------------------------------------------------------
# ntk-zoo reproduce


def add_reproduce(subparsers) -> None:
  p = subparsers.add_parser(
      "reproduce", help="run one experiment of experiments/ (a figure or study)",
      description=(
          "Runs experiments/<FIGURE>.py: get_config(full) then run(config, out_dir). CPU-sized "
          "by default, --full for the paper's sizes. The experiments live in the repository "
          f"checkout (an editable install), or in --experiments-dir / ${EXPERIMENTS_ENV}."))
  p.add_argument("figure", nargs="?", metavar="FIGURE", help="experiment name (see --list)")
  p.add_argument("--list", action="store_true", help="list the experiments and exit")
  p.add_argument("--full", action="store_true", help="the paper's sizes (default: CPU-sized)")
  p.add_argument("--out", type=pathlib.Path, metavar="DIR",
                 help="output directory (default: experiments/out/FIGURE)")
  p.add_argument("--experiments-dir", type=pathlib.Path, metavar="DIR",
                 help=f"where the experiments are (default: ${EXPERIMENTS_ENV}, else the "
                      "experiments/ folder next to the ntk_zoo package)")
  p.set_defaults(run=run_reproduce)


def experiments_dir(override: pathlib.Path | None = None) -> pathlib.Path:
  """`override`, else $NTK_ZOO_EXPERIMENTS, else `experiments/` beside the ntk_zoo package."""
  if override is None and os.environ.get(EXPERIMENTS_ENV):
    override = pathlib.Path(os.environ[EXPERIMENTS_ENV])
  path = override or pathlib.Path(__file__).resolve().parent.parent / "experiments"
  if not path.is_dir():
    raise UsageError(
        f"no experiments directory at {path}: `reproduce` runs the scripts of a repository "
        f"checkout (git clone, then pip install -e .), or pass --experiments-dir / set "
        f"${EXPERIMENTS_ENV}")
  return path


def list_experiments(path: pathlib.Path) -> dict[str, str]:
  """{name: first docstring line} of the modules in `path` defining get_config and run."""
  found = {}
  for file in sorted(path.glob("*.py")):
    if file.name.startswith("_"):
      continue
    try:
      tree = ast.parse(file.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
      continue
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    if {"get_config", "run"} <= defined:
      found[file.stem] = (ast.get_docstring(tree) or "").strip().split("\n")[0]
  return found


def run_reproduce(args: argparse.Namespace) -> dict[str, Any] | None:
  """`ntk-zoo reproduce`: runs one experiment; returns its result."""
  path = experiments_dir(args.experiments_dir)
  available = list_experiments(path)
  if args.list:
    width = max(map(len, available), default=0)
    for name, doc in available.items():
      print(f"{name:{width}s}  {doc}")
    if not available:
      print(f"(no experiments in {path})")
    return None
  if not args.figure:
    raise UsageError(f"name an experiment, or --list; available: {', '.join(available)}")
  name = args.figure.removesuffix(".py")
  if name not in available:
    raise UsageError(f"unknown experiment {args.figure!r} in {path}; available: "
                     f"{', '.join(available) or 'none'}")
  out = args.out or path / "out" / name
  _check_writable(out)
  with _importable(path):
    module = _import_experiment(path, name)
    config = module.get_config(full=args.full)
    print(f"experiment {name} ({'full' if args.full else 'CPU-sized'}) -> {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    result = module.run(config, out)
  text = json.dumps(result, indent=2, default=_jsonable)
  _write_outputs(out, {"result.json": lambda p: p.write_text(text + "\n")})
  print(text)
  print(f"wrote {out / 'result.json'}")
  return result


@contextlib.contextmanager
def _importable(path: pathlib.Path):
  """Lets an experiment import its siblings as `experiments.common` or `common`."""
  saved = list(sys.path)
  sys.path[:0] = [str(path.parent), str(path)]
  try:
    yield
  finally:
    sys.path[:] = saved


def _import_experiment(path: pathlib.Path, name: str):
  """Imports `path/name.py` as module `<path.name>.<name>`."""
  spec = importlib.util.spec_from_file_location(f"{path.name}.{name}", path / f"{name}.py")
  assert spec is not None and spec.loader is not None  # A .py file has a source loader.
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "tolist"):
    return value.tolist()
  if isinstance(value, pathlib.Path):
    return os.fspath(value)
  return str(value)


# ---------------------------------------------------------------------------------------------
# ntk-zoo score


def add_score(subparsers) -> None:
  p = subparsers.add_parser(
      "score", help="NAS trainability scores of NAS-Bench-201 cells (presets tenas, full)")
  nas.add_arguments(p)
  p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> None:
  status = nas.main(args)  # Prints its table, or one line on stderr for bad input.
  if status:
    raise SystemExit(status)


# Subcommands, in the order `--help` lists them: one `add_<name>(subparsers)` each.
from ntk_zoo import kernel_cli  # noqa: E402  (it uses this module: imported once this one is defined)

COMMANDS: tuple[Callable[[Any], None], ...] = (add_ntk, add_score, add_reproduce,
                                               kernel_cli.add_kernel)
