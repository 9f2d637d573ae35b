"""What the `ntk-zoo` subcommands share: defaults, errors, argument types, model and image
loading, output files written all at once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

import ntk_zoo
from ntk_zoo import images as images_lib
from ntk_zoo.models import mixer, vit
from ntk_zoo.models.convert import checkpoints
from ntk_zoo.models.convert import loading as load_lib
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


class UsageError(Exception):
  """Bad input from the user: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
  """argparse, with errors as one line instead of the usage block."""
  commands: tuple[str, ...]  # The top-level parser's subcommand names (set by build_parser).

  def error(self, message: str):
    fail(f"{message} (see {self.prog} --help)")


def fail(message: str):
  print(f"{PROG}: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def models_epilog() -> str:
  models = textwrap.fill(", ".join(ntk_zoo.models.list()), 92, initial_indent="  ",
                         subsequent_indent="  ")
  return (f"models (ntk_zoo.models.list()):\n{models}\n"
          f"implementations:\n  {', '.join(IMPLEMENTATIONS)} (aliases jc, vp, sd)")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


def ntk_options(args: argparse.Namespace) -> tuple[str, str, int | None, int | None]:
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
  check_image_size(name, image_size)
  return name, implementation, budget, image_size


def fmt(values: np.ndarray) -> str:
  return " ".join(f"{v:.4g}" for v in values)


def cost(plan) -> str:
  return f"est. {plan.flops:.3g} FLOPs, peak {memory.fmt_bytes(plan.peak_bytes)}"


def plan_record(plan) -> dict[str, Any]:
  record = dataclasses.asdict(plan)
  record["summary"] = str(plan)
  return record


def check_image_size(name: str, image_size: int | None) -> None:
  """Patch models need at least one patch (the models accept smaller images silently)."""
  family, variant = load_lib.family(name)
  if image_size is None or family not in ("vit", "mixer"):
    return
  patch = (vit if family == "vit" else mixer).decode_variant(variant).patch_size
  if image_size < patch:
    raise UsageError(f"--image-size {image_size} is too small for {name}: its patches are "
                     f"{patch}x{patch}, so images need a side >= {patch} (a multiple of {patch} "
                     "uses every pixel)")


def build_model(name: str, checkpoint: pathlib.Path | None, num_classes: int | None,
                 image_size: int | None):
  """The zoo model `name`, randomly initialized or with `checkpoint`'s weights."""
  if checkpoint is None:
    num_classes = num_classes or DEFAULT_NUM_CLASSES
  try:
    return load_lib.load(name, checkpoint, num_classes=num_classes, image_size=image_size)
  except (FileNotFoundError, load_lib.CheckpointFormatError) as e:
    raise UsageError(str(e)) from None
  except checkpoints.CheckpointMismatchError as e:
    raise UsageError(f"checkpoint {one_line(str(e))}") from None
  except Exception as e:  # pylint: disable=broad-except  (any failure here is the input's)
    if checkpoint is None:
      raise UsageError(f"cannot build {name}: {one_line(str(e))}") from None
    raise UsageError(f"cannot load {checkpoint} into {name}: {one_line(str(e))}") from None


def image_files(args: argparse.Namespace) -> list[pathlib.Path] | None:
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


def load_images(files: list[pathlib.Path] | None, n: int | None,
                 shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
  """(n, *shape) float32 images in [0, 1] and their names."""
  size, channels = (shape[0], shape[1]), shape[2]
  if files is None:
    return images_lib.sample_photos(n or DEFAULT_N, size, channels, progress=True)
  try:
    return images_lib.load_images(files, size, channels, progress=True), [f.name for f in files]
  except ValueError as e:
    raise UsageError(str(e)) from None


def one_line(message: str, max_items: int = 5) -> str:
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


def check_writable(out: pathlib.Path) -> None:
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


def write_outputs(out: pathlib.Path, writers: dict[str, Callable[[pathlib.Path], Any]]) -> None:
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
