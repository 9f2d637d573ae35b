"""`ntk-zoo kernel`: the NTK of a zoo model over a dataset, tiled into a resumable store.

    ntk-zoo kernel                                   # resnet18, 64 digits at 32², full NTK
    ntk-zoo kernel --model resnet50 --data photos/ --n 200 --out k.zarr --pseudo
    ntk-zoo kernel --data tfds:cifar10:test --n 1000 --n2 100 --out k.zarr

Rerunning the same command after a crash or a kill continues from the finished tiles.
"""

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
from ntk_zoo import images as images_lib
from ntk_zoo.cli import _common as cli
from ntk_zoo.dataset import inputs as inputs_lib
from ntk_zoo.dataset import store as store_lib

DEFAULT_DATA = "digits"
DEFAULT_N = 64
DEFAULT_IMAGE_SIZE = 32
DEFAULT_OUT = pathlib.Path("ntk_zoo_kernel")


def add_kernel(subparsers) -> None:
  p = subparsers.add_parser(
      "kernel", help="NTK of a zoo model over a dataset, tiled into a resumable on-disk store",
      description=textwrap.fill(
          "The N1 x N2 (x O x O) NTK of a zoo model over a dataset, cut into tiles planned "
          "from the memory budget and written to a chunked on-disk store (tensorstore zarr) "
          "as they finish, with a progress bar and ETA. Rerunning the same command after a "
          "crash or kill continues: finished tiles are never recomputed. x2 = None (no --n2) "
          "gives the symmetric kernel, each off-diagonal tile computed once. Open the result "
          "with ntk_zoo.load_kernel(OUT). Several processes started with JAX's distributed "
          "environment (jax.distributed) share the tiles of one store.", 92),
      epilog=cli.models_epilog(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default=cli.DEFAULT_MODEL, metavar="NAME",
                 help=f"zoo model (default {cli.DEFAULT_MODEL})")
  p.add_argument("--checkpoint", type=pathlib.Path, metavar="FILE",
                 help="weights to load (formats as for `ntk-zoo ntk`); default: random init")
  p.add_argument("--data", default=DEFAULT_DATA, metavar="SOURCE",
                 help="'digits' (scikit-learn's 1797 handwritten digits, default), 'photos' "
                      "(the 12 bundled photographs), a .npy/.npz file of (N, H, W, C) images, a "
                      "directory of image files, or tfds:NAME[:SPLIT] (a tfds.data_source; "
                      "needs `pip install ntk_zoo[data]` and the prepared dataset)")
  p.add_argument("--n", type=cli.positive_int, default=DEFAULT_N, metavar="N",
                 help=f"x1: the first N examples (default {DEFAULT_N})")
  p.add_argument("--n2", type=cli.positive_int, metavar="N2",
                 help="x2: the N2 examples after x1's (default: x2 = x1, symmetric)")
  p.add_argument("--image-size", type=cli.positive_int, metavar="S",
                 help=f"input side (default {DEFAULT_IMAGE_SIZE}; with --checkpoint, the "
                      "architecture's own)")
  p.add_argument("--num-classes", type=cli.positive_int, metavar="O",
                 help=f"logits O (default {cli.DEFAULT_NUM_CLASSES})")
  p.add_argument("--pseudo", action="store_true",
                 help="the pseudo-NTK (NTK of the sum of the logits / sqrt(O)), N1 x N2, O^2 "
                      "times smaller, instead of the full NTK")
  p.add_argument("--implementation", default="auto", metavar="IMPL",
                 help=f"one of {', '.join(cli.IMPLEMENTATIONS)} (default auto)")
  p.add_argument("--memory-budget", metavar="SIZE",
                 help="peak memory per tile, e.g. 8GB (default: 60%% of free RAM)")
  p.add_argument("--tile", type=cli.positive_int, metavar="T",
                 help="examples per tile side (default: planned from the memory budget)")
  p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, metavar="STORE",
                 help=f"the store directory (default ./{DEFAULT_OUT}); resumed if it holds "
                      "this computation")
  p.add_argument("--overwrite", action="store_true",
                 help="discard a store at --out made by another computation")
  p.set_defaults(run=run_kernel)


def run_kernel(args: argparse.Namespace) -> dict[str, Any]:
  """`ntk-zoo kernel`: computes the dataset kernel into the store; returns the summary."""
  if args.image_size is None and args.checkpoint is None:
    args.image_size = DEFAULT_IMAGE_SIZE
  name, implementation, budget, image_size = cli.ntk_options(args)
  cli.check_writable(args.out)
  total = args.n + (args.n2 or 0)
  source, describe = _source(args.data, total)
  model = cli.build_model(name, args.checkpoint, args.num_classes, image_size)
  source = _Fitted(source, model.input_spec.shape)
  transform = lambda batch: np.asarray(model.input_spec.preprocess(batch))
  x1 = inputs_lib.Examples(_Slice(source, 0, args.n), transform)
  x2 = None if not args.n2 else inputs_lib.Examples(_Slice(source, args.n, total), transform)
  f = model.apply
  if args.pseudo:
    kernel = ntk_zoo.pseudo_ntk_fn(f, vmap_axes=0, implementation=implementation,
                                   memory_budget=budget)
  else:
    kernel = ntk_zoo.ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=implementation,
                            memory_budget=budget)
  kind = "pseudo-NTK" if args.pseudo else "full NTK"
  print(f"model: {model.name} ({model.num_params:,} params), {model.num_classes} logits; "
        f"{kind} of {describe}: x1 = {args.n} examples, "
        + (f"x2 = the next {args.n2}" if args.n2 else "x2 = x1 (symmetric)"))
  start = time.perf_counter()
  try:
    result = ntk_zoo.dataset_ntk(kernel, x1, x2, model.params, store=args.out, tile=args.tile,
                                 overwrite=args.overwrite)
  except store_lib.StoreMismatchError as e:
    raise cli.UsageError(str(e).replace("overwrite=True (--overwrite)", "--overwrite")) from None
  seconds = time.perf_counter() - start
  entries = int(np.prod(result.shape))
  decision = result.decision
  if decision is not None:
    print(f"method: {decision.chosen}; per tile: {decision.plan}")
  print(f"kernel {result.shape} in tiles of {result.tile[0]}x{result.tile[1]}: "
        f"{result.computed} computed, {result.reused} already done"
        + (f", {result.remaining} left to other processes" if result.remaining else "")
        + f"; {seconds:.1f} s"
        + (f", {entries * result.computed / max(1, result.computed + result.reused) / seconds:.4g} "
           "entries/s" if result.computed else ""))
  summary = {
      "model": model.name, "num_params": model.num_params, "num_classes": model.num_classes,
      "checkpoint": os.fspath(args.checkpoint) if args.checkpoint else None,
      "data": args.data, "n": args.n, "n2": args.n2, "kernel": kind,
      "shape": list(result.shape), "tile": list(result.tile), "computed": result.computed,
      "reused": result.reused, "remaining": result.remaining, "seconds": seconds,
      "method": decision.chosen if decision else None,
      "plan": cli.plan_record(decision.plan) if decision else None,
      "device": str(jax.devices()[0]), "devices": jax.device_count(),
      "processes": jax.process_count(), "jax": jax.__version__,
  }
  if jax.process_index() == 0:
    tmp = args.out / f".summary.{os.getpid()}.json"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, args.out / "summary.json")
  print(f"wrote {args.out} (open with ntk_zoo.load_kernel({os.fspath(args.out)!r}))")
  return summary


class _Slice:
  """Examples [start, stop) of a sequence source, as a sequence."""

  def __init__(self, source, start: int, stop: int):
    self.source, self.start, self.stop = source, start, stop

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, i: int):
    if not 0 <= i < len(self):
      raise IndexError(i)
    return self.source[self.start + i]


def _source(data: str, n: int):
  """(sequence of images, description) for --data, with at least `n` examples."""
  if data == "digits":
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    source, describe = load_digits().images.astype(np.float32)[..., None] / 16.0, "digits"
  elif data == "photos":
    source = _Lazy(list(images_lib.SAMPLE_PHOTOS.values()))
    describe = "bundled photos"
  elif data.startswith("tfds:"):
    source, describe = _tfds(data), data
  else:
    path = pathlib.Path(data)
    if not path.exists():
      raise cli.UsageError(f"--data {data}: no such file or directory (or use digits, photos, "
                           "tfds:NAME)")
    if path.is_dir():
      try:
        files = images_lib.image_files([path])
      except OSError as e:
        raise cli.UsageError(str(e)) from None
      source = _Lazy([lambda f=f: _read_image(f) for f in files])
    elif path.suffix in (".npy", ".npz"):
      arrays = np.load(path, mmap_mode="r") if path.suffix == ".npy" else np.load(path)
      source = arrays if path.suffix == ".npy" else arrays[arrays.files[0]]
      if source.ndim not in (3, 4):
        raise cli.UsageError(f"--data {data}: expected (N, H, W[, C]) images, got shape "
                             f"{source.shape}")
    else:
      raise cli.UsageError(f"--data {data}: not a .npy/.npz file or a directory of images")
    describe = data
  if len(source) < n:
    raise cli.UsageError(f"--data {data} holds {len(source)} examples; --n + --n2 asks for {n}")
  return source, describe


class _Lazy:
  """A sequence whose items are loaded on access."""

  def __init__(self, loaders):
    self.loaders = loaders

  def __len__(self) -> int:
    return len(self.loaders)

  def __getitem__(self, i: int):
    return self.loaders[i]()


def _read_image(path: pathlib.Path) -> np.ndarray:
  from skimage import io  # pylint: disable=g-import-not-at-top
  return io.imread(path)


def _tfds(data: str):
  _, name, *rest = data.split(":")
  split = rest[0] if rest else "train"
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise cli.UsageError("--data tfds:...: tensorflow-datasets is not installed; "
                         "pip install 'ntk_zoo[data]'") from None
  try:
    return _TfdsImages(tfds.data_source(name, split=split))
  except Exception as e:  # pylint: disable=broad-except  (unknown or unprepared dataset)
    raise cli.UsageError(f"--data {data}: {cli.one_line(str(e))}") from None


class _TfdsImages:
  """The "image" feature of a tfds data source's examples."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> np.ndarray:
    return np.asarray(self.source[i]["image"])


class _Fitted:
  """Images of any size and dtype, center-cropped and resized to (H, W, C) float32 in [0, 1]."""

  def __init__(self, source, shape: tuple[int, ...]):
    self.source, self.shape = source, shape

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> np.ndarray:
    image = np.asarray(self.source[i])
    if image.shape == self.shape and image.dtype == np.float32:
      return image
    return images_lib.fit(image, (self.shape[0], self.shape[1]), self.shape[2])
