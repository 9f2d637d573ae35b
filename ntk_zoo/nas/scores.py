"""Score presets, the offline digits data, NTKs of cell networks and their trainability scores."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import traverse_util

from ntk_zoo.ntk import ntk_fn
from ntk_zoo.ntk.typing import PyTree
from ntk_zoo.nas.space import Architecture, parse_arch
from ntk_zoo.nas.network import CellNetwork, NetworkConfig, O0, build, init_fn


# ---------------------------------------------------------------------------------------------
# Presets.

@dataclasses.dataclass(frozen=True)
class ScorePreset:
  """How the NTK of an architecture is taken and scored.

  Attributes:
    name: preset name.
    network: the network the architecture is scored as.
    kernel: "full" (the N·O × N·O NTK; the pseudo-NTK is the sum of its O×O blocks) or "pseudo"
      (only the N × N NTK of the sum of the logits, O times cheaper: TE-NAS's cost; κ of the full
      NTK is then NaN).
    batchnorm: "train" (batch statistics; couples the examples of a batch) or "calibrated"
      (inference mode on running statistics computed on a separate batch of `calibration_size`).
    differentiate: "weights" (leaves PyTorch calls `weight`: conv/linear kernels and BN scales)
      or "all" parameters.
    per_example: compute the kernel with `vmap_axes=0` (only valid without train-mode BN).
    eig_dtype: dtype of the host eigensolver, "float32" or "float64".
    batch_size: N, examples in the scored batch.
    test_size: held-out examples the kernel-regression proxy is evaluated on.
    calibration_size: examples the BN statistics are computed on ("calibrated" only).
    repeats: random inits and batches each score is averaged over.
    ridge: kernel-regression ridge, relative to the mean eigenvalue of the NTK.
    implementation: `ntk_fn` implementation.
    fast_compile: compile the scoring programs with XLA's CPU backend at LLVM -O0: ~4× faster
      compiles of these small per-architecture programs (which dominate on CPU), slower runs.
    dense_max: largest N·O for which the full NTK is formed. Above it (full, per-example
      kernels) κ of the full NTK and the trace come from `ntk_zoo.ntk_spectrum` (Lanczos on
      NTK-vector products, the matrix never formed); the pseudo-NTK κ is still exact (N × N),
      and the kernel-regression proxy, which needs the kernel, is NaN.
  """
  name: str
  network: NetworkConfig
  kernel: str = "full"
  batchnorm: str = "calibrated"
  differentiate: str = "all"
  per_example: bool = True
  eig_dtype: str = "float64"
  batch_size: int = 32
  test_size: int = 32
  calibration_size: int = 128
  repeats: int = 3
  ridge: float = 1e-3
  implementation: str = "auto"
  fast_compile: bool = False
  dense_max: int = 8192

  def __post_init__(self):
    if self.kernel not in ("full", "pseudo"):
      raise ValueError(f"kernel must be 'full' or 'pseudo', got {self.kernel!r}.")
    if self.batchnorm not in ("train", "calibrated"):
      raise ValueError(f"batchnorm must be 'train' or 'calibrated', got {self.batchnorm!r}.")
    if self.differentiate not in ("weights", "all"):
      raise ValueError(f"differentiate must be 'weights' or 'all', got {self.differentiate!r}.")
    if self.per_example and self.batchnorm == "train":
      raise ValueError("Train-mode BatchNorm couples the examples of a batch: the kernel cannot be "
                       "computed per example. Set per_example=False or batchnorm='calibrated'.")
    if self.eig_dtype not in ("float32", "float64"):
      raise ValueError(f"eig_dtype must be 'float32' or 'float64', got {self.eig_dtype!r}.")
    if min(self.batch_size, self.repeats) < 1 or self.test_size < 0:
      raise ValueError(f"batch_size and repeats must be >= 1 and test_size >= 0, got "
                       f"{self.batch_size}, {self.repeats}, {self.test_size}.")


PRESETS: dict[str, ScorePreset] = {
    "tenas": ScorePreset(
        "tenas", NetworkConfig(channels=3, cells_per_stage=1, image_size=32,
                               weight_init="kaiming_fanout"),
        kernel="pseudo", batchnorm="train", differentiate="weights", per_example=False, eig_dtype="float32",
        batch_size=72, test_size=72, repeats=3),
    "full": ScorePreset(
        "full", NetworkConfig(channels=16, cells_per_stage=1, image_size=32,
                              weight_init="kaiming_fanin"),
        kernel="full", batchnorm="calibrated", differentiate="all", per_example=True, eig_dtype="float64",
        batch_size=32, test_size=32, repeats=3),
}

SCORES = ("kappa_ntk", "kappa_pseudo", "trace", "kr_accuracy", "kr_mse")


def get_preset(preset: str | ScorePreset) -> ScorePreset:
  if isinstance(preset, ScorePreset):
    return preset
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; use one of {sorted(PRESETS)} or a ScorePreset.")
  return PRESETS[preset]


# ---------------------------------------------------------------------------------------------
# Data.

@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  return d.images.astype(np.float32) / 16.0, d.target.astype(np.int32)


def digits(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits (1797 8×8 grayscale images, 10 classes; ships offline), bilinearly
  upsampled to image_size², repeated to 3 channels and standardized.

  Returns:
    images (1797, image_size, image_size, 3) float32, labels (1797,) int32.
  """
  images, labels = _digits_raw()
  x = jax.image.resize(jnp.asarray(images), (len(images), image_size, image_size), "bilinear")
  x = np.asarray(x)
  x = (x - x.mean()) / x.std()
  return np.repeat(x[..., None], 3, axis=-1), labels


def _fit_images(images: np.ndarray, image_size: int) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be (N, H, W, 3) or (N, H, W, 1), got shape {images.shape}.")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (image_size, image_size):
    images = np.asarray(jax.image.resize(images, (len(images), image_size, image_size, 3),
                                         "bilinear"))
  return images


# ---------------------------------------------------------------------------------------------
# Kernels and scores.

def _is_weight(path: tuple[str, ...]) -> bool:
  """TE-NAS differentiates the parameters PyTorch names `weight`: conv/linear kernels and BN
  scales (Flax `kernel` / `scale`), not biases."""
  return path[-1] in ("kernel", "scale")


def split_params(params: PyTree, differentiate: str) -> tuple[dict, dict]:
  """(differentiated, frozen) flat dicts {path: array} of a Flax params tree."""
  flat = traverse_util.flatten_dict(params)
  if differentiate == "all":
    return flat, {}
  return ({p: v for p, v in flat.items() if _is_weight(p)},
          {p: v for p, v in flat.items() if not _is_weight(p)})


def make_apply(model: CellNetwork, frozen: dict, batch_stats: PyTree,
               train_bn: bool) -> Callable[[dict, jax.Array], jax.Array]:
  """`apply(diff, x) -> logits (N, O)`: `model` as a function of its differentiated parameters
  (a flat {path: array} dict), BatchNorm in train mode (batch statistics) or on `batch_stats`."""

  def apply(diff: dict, x: jax.Array) -> jax.Array:
    variables = {"params": traverse_util.unflatten_dict({**frozen, **diff}),
                 "batch_stats": batch_stats}
    if train_bn:
      return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    # Without `mutable`, apply returns the output alone (flax annotates both cases as one union).
    return cast(jax.Array, model.apply(variables, x, train=False))

  return apply


def calibrate_batch_stats(model: CellNetwork, variables: dict, x: jax.Array) -> PyTree:
  """BatchNorm running statistics set to the batch statistics of `x` (one train-mode pass)."""
  _, updates = model.clone(bn_momentum=0.0).apply(variables, x, train=True,
                                                  mutable=["batch_stats"])
  return updates["batch_stats"]


def _kappa(matrix: np.ndarray, dtype: str) -> float:
  """λmax/λmin of a symmetric matrix by `eigvalsh` in `dtype`. float32 keeps TE-NAS's behaviour
  (no regularization, λmin may be negative); float64 gives inf when λmin <= 0."""
  eig = np.linalg.eigvalsh(np.asarray(matrix, dtype))
  if dtype == "float32":
    with np.errstate(divide="ignore", invalid="ignore"):  # An all-zero kernel gives NaN.
      return float(eig[-1] / eig[0])
  return float(eig[-1] / eig[0]) if eig[0] > 0 else math.inf


def kernel_scores(k_train: np.ndarray, *, eig_dtype: str = "float64",
                  k_test: np.ndarray | None = None, labels_train: np.ndarray | None = None,
                  labels_test: np.ndarray | None = None, num_classes: int = 10,
                  ridge: float = 1e-3) -> dict[str, float]:
  """Scores of one NTK: a full (N, N, O, O) NTK, or an (N, N) pseudo-NTK alone.

  Args:
    k_train: the NTK of the scored batch with itself, (N, N, O, O) or (N, N).
    eig_dtype: eigensolver dtype, "float32" or "float64".
    k_test: the NTK of the held-out batch with the scored one, (M, N, O, O) or (M, N) (None:
      no kernel regression).
    labels_train, labels_test: (N,), (M,) integer labels in [0, num_classes).
    num_classes: classes of the one-hot regression targets (a full NTK has O of them).
    ridge: kernel-regression ridge relative to the mean eigenvalue of the kernel.

  Returns:
    {"kappa_ntk", "kappa_pseudo", "trace", "kr_accuracy", "kr_mse"}; NaN where not computed
    (kappa_ntk from a pseudo-NTK, kernel regression without k_test). trace is the mean diagonal
    entry of the kernel given (per logit for a full NTK). Kernel regression predicts centered
    one-hot targets with the vector-valued kernel (full NTK) or per class (pseudo-NTK).
  """
  k = np.asarray(k_train, np.float64)
  n = k.shape[0]
  if k.ndim == 4:
    o = k.shape[2]
    gram = k.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    pseudo = k.sum((2, 3))
  else:
    o, gram, pseudo = 1, k, k
  gram = (gram + gram.T) / 2
  trace = float(np.trace(gram) / len(gram))
  scores = {"kappa_ntk": _kappa(gram, eig_dtype) if k.ndim == 4 else math.nan,
            "kappa_pseudo": _kappa(pseudo, eig_dtype), "trace": trace,
            "kr_accuracy": math.nan, "kr_mse": math.nan}
  if k_test is None or labels_train is None or labels_test is None:
    return scores
  c = num_classes
  kt = np.asarray(k_test, np.float64)
  m = kt.shape[0]
  cross = kt.transpose(0, 2, 1, 3).reshape(m * o, n * o) if kt.ndim == 4 else kt
  targets = np.eye(c)[labels_train] - 1.0 / c  # Centered one-hot regression targets.
  rhs = targets.reshape(n * o, c // o)  # Full NTK: o == c, one column; pseudo: c columns.
  # A cell with no path from its input to its output gives a (near) zero kernel: then the
  # ridge is absolute, and a still singular system is solved by least squares.
  lam = ridge * trace if trace > 0 else ridge
  try:
    alpha = scipy.linalg.solve(gram + lam * np.eye(len(gram)), rhs, assume_a="pos")
  except np.linalg.LinAlgError:
    alpha = np.linalg.lstsq(gram + lam * np.eye(len(gram)), rhs, rcond=None)[0]
  pred = (cross @ alpha).reshape(m, c)
  scores["kr_accuracy"] = float(np.mean(pred.argmax(-1) == labels_test))
  scores["kr_mse"] = float(np.mean((pred - (np.eye(c)[labels_test] - 1.0 / c)) ** 2))
  return scores


def forward_flops(model: CellNetwork, variables: dict, image_size: int) -> float:
  """FLOPs of one example's inference forward, from XLA's cost analysis of the compiled program."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # FLOPs are counted on the optimized HLO, before LLVM: -O0 changes compile time, not them.
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False),
                     compiler_options=O0).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if cost is None:  # The backend has no cost analysis.
    return math.nan
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", math.nan))


def kernel_fn(model: CellNetwork, preset: ScorePreset) -> Callable:
  """Jitted `kernel(x1, x2, diff, frozen, stats)`: the NTK of `model` w.r.t. `diff` (a flat
  {path: array} dict), (N1, N2, O, O) for `preset.kernel == "full"`, (N1, N2) for the pseudo-NTK.
  `frozen` parameters and BN `stats` are passed as `f_kwargs`, so one compilation serves every
  repeat. `x2=None` means x1."""
  train_bn, pseudo = preset.batchnorm == "train", preset.kernel == "pseudo"

  def apply(diff: dict, x: jax.Array, frozen: dict, stats: PyTree) -> jax.Array:
    logits = make_apply(model, frozen, stats, train_bn)(diff, x)
    return logits.sum(-1) if pseudo else logits

  kernel = ntk_fn(apply, implementation=preset.implementation, trace_axes=(),
                  vmap_axes=0 if preset.per_example else None)
  return _jit(lambda x1, x2, diff, frozen, stats: kernel(x1, x2, diff, frozen=frozen,
                                                          stats=stats), preset)


def _jit(fn: Callable, preset: ScorePreset) -> Callable:
  return jax.jit(fn, compiler_options=O0 if preset.fast_compile else None)


def _count(tree: PyTree) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def _batches(n_images: int, preset: ScorePreset, seed: int, repeat: int,
             with_test: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Disjoint (train, test, calibration) indices of one repeat; the same for every arch."""
  perm = np.random.default_rng([seed, repeat]).permutation(n_images)
  b, t = preset.batch_size, preset.test_size if with_test else 0
  c = preset.calibration_size if preset.batchnorm == "calibrated" else 0
  return perm[:b], perm[b:b + t], perm[b + t:b + t + c]


def _train_and_test_kernels(kernel, x_train, x_test, diff, frozen, stats, per_example: bool):
  """(Θ(train, train), Θ(test, train) or None) with one compilation of `kernel`.

  Per-example kernels: one symmetric kernel of the concatenated batches, sliced. Coupled
  (train-mode BN) kernels must see each batch alone: both are computed as Θ(x1, x2) with an
  explicit x2, which shares one compiled program when the batches have the same size.
  """
  n = len(x_train)
  if per_example:
    both = np.asarray(kernel(jnp.asarray(np.concatenate([x_train, x_test])), None, diff,
                             frozen, stats))
    return both[:n, :n], (both[n:, :n] if len(x_test) else None)
  x = jnp.asarray(x_train)
  k_train = np.asarray(kernel(x, x, diff, frozen, stats))
  k_test = np.asarray(kernel(jnp.asarray(x_test), x, diff, frozen, stats)) if len(x_test) else None
  return k_train, k_test


def _matrix_free(preset: ScorePreset) -> bool:
  return (preset.kernel == "full" and preset.per_example
          and preset.batch_size * preset.network.num_classes > preset.dense_max)


def _matrix_free_scores(model: CellNetwork, preset: ScorePreset, x: np.ndarray, diff: dict,
                        frozen: dict, stats: PyTree) -> dict[str, float]:
  """Scores without forming the N·O × N·O NTK: κ and trace from `ntk_spectrum`, the pseudo-NTK
  (N × N) formed, kernel regression NaN."""
  from ntk_zoo import spectra  # pylint: disable=g-import-not-at-top
  apply = make_apply(model, frozen, stats, preset.batchnorm == "train")
  spec = spectra.ntk_spectrum(apply, diff, jnp.asarray(x), k=1, batch_size=min(len(x), 64))
  pseudo_fn = jax.jit(ntk_fn(lambda p, x: apply(p, x).sum(-1), trace_axes=(), vmap_axes=0,
                             implementation=preset.implementation))
  pseudo = np.asarray(pseudo_fn(jnp.asarray(x), None, diff), np.float64)
  return {"kappa_ntk": spec.condition_number, "kappa_pseudo": _kappa(pseudo, preset.eig_dtype),
          "trace": spec.trace / spec.size, "kr_accuracy": math.nan, "kr_mse": math.nan}


def score_architecture(arch: str | Architecture, preset: str | ScorePreset, images: np.ndarray,
                       labels: np.ndarray | None, seed: int = 0) -> dict:
  """One row of `score_architectures` (images already at the preset's size)."""
  arch, preset = parse_arch(arch), get_preset(preset)
  model = build(arch, preset.network)
  kernel = kernel_fn(model, preset)
  size = preset.network.image_size
  init = init_fn(model, size)
  calibrate = _jit(functools.partial(calibrate_batch_stats, model), preset)
  with_test = labels is not None and preset.test_size > 0
  per_repeat: dict[str, list[float]] = {s: [] for s in SCORES}
  for r in range(preset.repeats):
    train, test, calib = _batches(len(images), preset, seed, r, with_test)
    variables = init(jax.random.fold_in(jax.random.PRNGKey(seed), r))
    stats = variables["batch_stats"]
    if preset.batchnorm == "calibrated":
      stats = calibrate(variables, jnp.asarray(images[calib]))
    diff, frozen = split_params(variables["params"], preset.differentiate)
    if _matrix_free(preset):
      scores = _matrix_free_scores(model, preset, images[train], diff, frozen, stats)
      for name, value in scores.items():
        per_repeat[name].append(value)
      continue
    k_train, k_test = _train_and_test_kernels(kernel, images[train], images[test], diff,
                                              frozen, stats, preset.per_example)
    scores = kernel_scores(k_train, eig_dtype=preset.eig_dtype, k_test=k_test,
                           labels_train=None if labels is None else labels[train],
                           labels_test=None if labels is None else labels[test],
                           num_classes=preset.network.num_classes, ridge=preset.ridge)
    for name, value in scores.items():
      per_repeat[name].append(value)
  row: dict[str, Any] = {"arch": str(arch), "preset": preset.name}
  for name, values in per_repeat.items():
    v = np.asarray(values, np.float64)
    row[f"{name}_mean"] = float(v.mean())
    row[f"{name}_std"] = float(v.std()) if np.all(np.isfinite(v)) else math.nan
  row["params"] = _count(variables["params"])
  row["flops"] = forward_flops(model, variables, size)
  row["repeats"] = per_repeat
  return row


def score_architectures(archs: Sequence[str | Architecture], preset: str | ScorePreset = "full",
                        *, images: np.ndarray | None = None, labels: np.ndarray | None = None,
                        repeats: int | None = None, batch_size: int | None = None, seed: int = 0,
                        progress: bool = True, network: NetworkConfig | None = None
                        ) -> list[dict]:
  """Trainability scores of each architecture (see the module docstring).

  Args:
    archs: NB201 strings or `Architecture`s.
    preset: "tenas", "full" or a `ScorePreset`.
    images: (M, H, W, 3) float images (resized to the preset's size if needed). Default:
      scikit-learn's digits (offline).
    labels: (M,) integer labels of `images`, for the kernel-regression proxy (without them it is
      NaN). Default: the digits' labels when `images` is None.
    repeats, batch_size, network: override the preset's.
    seed: seeds the inits and batches (the same batches for every architecture).
    progress: show a tqdm bar over architectures.

  Returns:
    One dict per architecture: "arch", "preset", "<score>_mean" and "<score>_std" for each of
    kappa_ntk, kappa_pseudo, trace, kr_accuracy, kr_mse; "params", "flops"; and "repeats"
    ({score: [one value per repeat]}).

  Raises:
    ValueError: bad architecture string, preset, or too few images for the batches.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  preset = get_preset(preset)
  overrides: dict[str, Any] = {k: v for k, v in (("repeats", repeats), ("batch_size", batch_size),
                                                 ("network", network)) if v is not None}
  preset = dataclasses.replace(preset, **overrides)
  archs = [parse_arch(a) for a in archs]
  if images is None:
    images, labels = digits(preset.network.image_size)
  images = _fit_images(images, preset.network.image_size)
  if labels is not None:
    labels = np.asarray(labels, np.int32).reshape(-1)
    if len(labels) != len(images):
      raise ValueError(f"{len(labels)} labels for {len(images)} images.")
  needed = preset.batch_size + (preset.test_size if labels is not None else 0) + (
      preset.calibration_size if preset.batchnorm == "calibrated" else 0)
  if len(images) < needed:
    raise ValueError(
        f"Preset {preset.name!r} draws {needed} distinct images per repeat (batch_size "
        f"{preset.batch_size}, test_size {preset.test_size}, calibration_size "
        f"{preset.calibration_size}); only {len(images)} given. Pass more images or a smaller "
        "batch_size.")
  return [score_architecture(arch, preset, images, labels, seed)
          for arch in tqdm(archs, desc=f"score ({preset.name})", unit="arch", disable=not progress)]
