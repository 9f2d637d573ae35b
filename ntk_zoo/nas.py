"""NAS trainability scores from the empirical NTK, on a NAS-Bench-201-style cell search space.

The search space (Dong & Yang, *NAS-Bench-201*, ICLR 2020, Fig. 1): a cell is a DAG on 4 nodes
whose 6 edges (j ← i, i < j) each carry one of `OPS`; node 0 is the cell input, node j the sum of
its incoming edges, node 3 the output. Architectures are written as NB201 strings,

    |nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|

(node 1's edges, then node 2's, then node 3's; `op~i` is the edge from node i). The network is
NB201's macro skeleton: 3×3 conv stem + BN; 3 stages of N cells at C, 2C, 4C channels with a
residual reduction block (stride 2) between stages; BN, ReLU, global average pool, linear head.
Convolutions are ReLU-Conv-BN.

Scores per architecture (`score_architectures`), each the mean and std over `repeats` random
initializations and random batches:

* `kappa_ntk`: λmax/λmin of the full NTK, the N·O × N·O matrix Θ(X, X);
* `kappa_pseudo`: λmax/λmin of the pseudo-NTK, the N × N NTK of the sum of the logits (TE-NAS,
  Chen, Gong & Wang, ICLR 2021). It is Σ_{o,o'} Θ_{oo'}, the sum of each O×O block of the NTK;
* `trace`: tr Θ(X, X) / (N·O), the mean squared norm of a logit's gradient;
* `kr_accuracy` / `kr_mse`: NTK kernel regression (the t → ∞ limit of gradient descent on the MSE,
  with a small ridge) fit on the scored batch and evaluated on a held-out batch, as the
  kernel-regression proxy of Park et al., *Towards NNGP-guided Neural Architecture Search*, 2020;
* `params` (number of parameters) and `flops` (XLA's cost analysis of one example's forward).

Two presets (`PRESETS`):

* `tenas`: TE-NAS's choices (`lib/procedures/ntk.py::get_ntk_n`, `prune_tenas.py`): BatchNorm in
  train mode (batch statistics: examples are coupled, so no per-example `vmap_axes`), gradients of
  the parameters PyTorch names `weight` (conv and linear kernels and BatchNorm scales; no biases),
  Kaiming-normal fan-out init, C = 3 and N = 1 cell per stage, batch 72 at 32×32, κ = λmax/λmin
  by a float32 eigensolver without regularization (a negative λmin gives a negative κ, as in
  TE-NAS), 3 repeats.
* `full`: this package's choices: every parameter, BatchNorm in inference mode with statistics
  recalibrated on a separate batch (fresh running statistics are 0 / 1, which would make BN an
  identity), per-example `vmap_axes=0`, float64 eigensolver on the host (λmin ≤ 0 gives κ = inf).

Example:
  >>> archs = nas.sample_architectures(5, seed=0)
  >>> rows = nas.score_architectures(archs, preset="full")      # offline digits by default
  >>> rows[0]["kappa_ntk_mean"], rows[0]["params"]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import traverse_util

from ntk_zoo.ntk import ntk_fn
from ntk_zoo.ntk.typing import PyTree

__all__ = [
    "OPS", "PRESETS", "Architecture", "CellNetwork", "NetworkConfig", "ScorePreset",
    "add_arguments", "build", "digits", "init_fn", "init_variables", "kernel_fn",
    "kernel_scores", "main", "parse_arch",
    "sample_architectures", "score_architectures",
]

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# (target node j, source node i) of the 6 edges, in NB201 string order.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_NODES = 4

ARCH_FORMAT = (
    "An architecture is an NB201 string of 3 node groups joined by '+', node j listing its edges "
    "from nodes 0..j-1 as 'op~i', e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
    f"|avg_pool_3x3~0|nor_conv_1x1~1|none~2|', with op one of {', '.join(OPS)}.")


# ---------------------------------------------------------------------------------------------
# Architectures.

@dataclasses.dataclass(frozen=True)
class Architecture:
  """One cell: the op on each of the 6 edges, in `EDGES` order."""
  ops: tuple[str, ...]

  def __post_init__(self):
    if len(self.ops) != len(EDGES) or any(op not in OPS for op in self.ops):
      raise ValueError(f"Architecture needs {len(EDGES)} ops from {OPS}, got {self.ops!r}.")

  def __str__(self) -> str:
    groups = []
    for j in range(1, NUM_NODES):
      groups.append("|" + "|".join(f"{op}~{i}" for (t, i), op in zip(EDGES, self.ops) if t == j)
                    + "|")
    return "+".join(groups)

  def edge_ops(self, node: int) -> list[tuple[int, str]]:
    """(source node, op) of every edge into `node`."""
    return [(i, op) for (t, i), op in zip(EDGES, self.ops) if t == node]

  @property
  def is_connected(self) -> bool:
    """Whether some path of non-'none' edges joins the cell's input to its output. Without
    one the cell outputs zero (plus BN biases) for every input: the network cannot learn."""
    reached = {0}
    for j in range(1, NUM_NODES):
      if any(i in reached and op != "none" for i, op in self.edge_ops(j)):
        reached.add(j)
    return NUM_NODES - 1 in reached


def parse_arch(arch: str | Architecture) -> Architecture:
  """Parses an NB201 architecture string (an `Architecture` passes through).

  Raises:
    ValueError: naming the malformed part and the expected format.
  """
  if isinstance(arch, Architecture):
    return arch
  if not isinstance(arch, str):
    raise ValueError(f"Architecture {arch!r} is not a string. {ARCH_FORMAT}")
  text = arch.strip()
  groups = text.split("+")
  if len(groups) != NUM_NODES - 1:
    raise ValueError(f"Architecture {arch!r} has {len(groups)} node groups, expected "
                     f"{NUM_NODES - 1}. {ARCH_FORMAT}")
  ops = []
  for j, group in enumerate(groups, start=1):
    if len(group) < 2 or group[0] != "|" or group[-1] != "|":
      raise ValueError(f"Architecture {arch!r}: node {j}'s group {group!r} must start and end "
                       f"with '|'. {ARCH_FORMAT}")
    edges = group[1:-1].split("|")
    if len(edges) != j:
      raise ValueError(f"Architecture {arch!r}: node {j} needs {j} edges (from nodes 0..{j - 1}),"
                       f" got {len(edges)} in {group!r}. {ARCH_FORMAT}")
    for i, edge in enumerate(edges):
      op, sep, source = edge.partition("~")
      if not sep or source != str(i):
        raise ValueError(f"Architecture {arch!r}: edge {edge!r} of node {j} should read "
                         f"'<op>~{i}'. {ARCH_FORMAT}")
      if op not in OPS:
        raise ValueError(f"Architecture {arch!r}: unknown op {op!r} on edge {i}->{j}; the ops are "
                         f"{', '.join(OPS)}.")
      ops.append(op)
  return Architecture(tuple(ops))


def sample_architectures(n: int, seed: int = 0) -> list[Architecture]:
  """`n` distinct architectures drawn uniformly from the 5^6 = 15,625 cells (reproducible)."""
  total = len(OPS) ** len(EDGES)
  if not 0 <= n <= total:
    raise ValueError(f"Can sample 0..{total} distinct architectures, asked for {n}.")
  indices = np.random.default_rng(seed).choice(total, size=n, replace=False)
  archs = []
  for index in indices.tolist():
    digits_ = [(index // len(OPS) ** e) % len(OPS) for e in range(len(EDGES))]
    archs.append(Architecture(tuple(OPS[d] for d in digits_)))
  return archs


# ---------------------------------------------------------------------------------------------
# The network.

INITS: dict[str, Callable] = {
    # PyTorch's kaiming_normal_ (untruncated normal, gain² = 2), as TE-NAS initializes.
    "kaiming_fanin": nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "kaiming_fanout": nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    "lecun": nn.initializers.lecun_normal(),
}


def _batch_norm(train: bool, momentum: float) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d defaults: eps 1e-5, momentum 0.1 (Flax momentum 0.9), affine."""
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5)


class ReLUConvBN(nn.Module):
  """ReLU → k×k conv (torch-style explicit padding, no bias) → BatchNorm."""
  features: int
  kernel_size: int
  stride: int = 1
  weight_init: str = "kaiming_fanin"
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = self.kernel_size // 2
    x = nn.Conv(self.features, (self.kernel_size,) * 2, strides=self.stride,
                padding=((pad, pad), (pad, pad)), use_bias=False,
                kernel_init=INITS[self.weight_init])(nn.relu(x))
    return _batch_norm(train, self.bn_momentum)(x)


class Cell(nn.Module):
  """The NB201 cell: node j = Σ_{i<j} op_ij(node i); 'none' edges are left out (a node with only
  'none' inputs is zero). Parametric edges are named `edge_{i}_{j}`."""
  arch: Architecture
  weight_init: str = "kaiming_fanin"
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    nodes = [x]
    for j in range(1, NUM_NODES):
      terms = []
      for i, op in self.arch.edge_ops(j):
        h = nodes[i]
        if op == "none":
          continue
        if op == "skip_connect":
          terms.append(h)
        elif op == "avg_pool_3x3":
          terms.append(nn.avg_pool(h, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                                   count_include_pad=False))
        else:
          k = 3 if op == "nor_conv_3x3" else 1
          terms.append(ReLUConvBN(x.shape[-1], k, weight_init=self.weight_init, bn_momentum=self.bn_momentum,
                                  name=f"edge_{i}_{j}")(h, train))
      nodes.append(sum(terms[1:], terms[0]) if terms else jnp.zeros_like(x))
    return nodes[-1]


class ReductionBlock(nn.Module):
  """NB201's residual reduction: ReLUConvBN 3×3 stride 2 → ReLUConvBN 3×3, plus a shortcut of
  2×2 average pooling and a 1×1 conv (no BN)."""
  features: int
  weight_init: str = "kaiming_fanin"
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = ReLUConvBN(self.features, 3, 2, self.weight_init, self.bn_momentum)(x, train)
    h = ReLUConvBN(self.features, 3, 1, self.weight_init, self.bn_momentum)(h, train)
    s = nn.avg_pool(x, (2, 2), strides=(2, 2))
    s = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=INITS[self.weight_init])(s)
    return s + h


class CellNetwork(nn.Module):
  """NB201's macro skeleton around one cell. Input (N, H, W, 3), output logits (N, num_classes).

  Attributes:
    arch: the cell.
    channels: C, the stem width (stages have C, 2C, 4C channels). NB201 trains C = 16.
    cells_per_stage: N cells per stage. NB201 trains N = 5.
    num_classes: logits O.
    weight_init: kernel initializer of convs and the head, a key of `INITS`.
    bn_momentum: Flax momentum of the BatchNorm running statistics (0: the last batch's).
  """
  arch: Architecture
  channels: int = 16
  cells_per_stage: int = 5
  num_classes: int = 10
  weight_init: str = "kaiming_fanin"
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=INITS[self.weight_init])(x)
    x = _batch_norm(train, self.bn_momentum)(x)
    for stage in range(3):
      if stage:
        x = ReductionBlock(self.channels * 2 ** stage, self.weight_init, self.bn_momentum)(x, train)
      for _ in range(self.cells_per_stage):
        x = Cell(self.arch, self.weight_init, self.bn_momentum)(x, train)
    x = nn.relu(_batch_norm(train, self.bn_momentum)(x))
    return nn.Dense(self.num_classes, kernel_init=INITS[self.weight_init])(jnp.mean(x, axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Size of the network an architecture is instantiated as (see `CellNetwork`)."""
  channels: int = 16
  cells_per_stage: int = 5
  num_classes: int = 10
  image_size: int = 32
  weight_init: str = "kaiming_fanin"

  def __post_init__(self):
    if self.weight_init not in INITS:
      raise ValueError(f"Unknown init {self.weight_init!r}; use one of {sorted(INITS)}.")


# XLA CPU compiler options for LLVM -O0. A network's init (threefry random numbers for every
# parameter) compiles in ~15 s at full optimization and ~2 s at -O0 (measured), and runs once.
O0 = {"xla_backend_optimization_level": 0}


def build(arch: str | Architecture, network: NetworkConfig = NetworkConfig()) -> CellNetwork:
  """The Flax module of `arch` at the size `network` gives."""
  return CellNetwork(parse_arch(arch), network.channels, network.cells_per_stage,
                     network.num_classes, network.weight_init)


def init_variables(model: CellNetwork, key: jax.Array, image_size: int) -> dict:
  """{"params": ..., "batch_stats": ...} of `model` for (·, image_size, image_size, 3) inputs."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return dict(model.init(key, x, train=False))


def init_fn(model: CellNetwork, image_size: int) -> Callable[[jax.Array], dict]:
  """Jitted `init(key) -> variables` (`init_variables`), compiled at LLVM -O0 (see `O0`); much
  faster than an eager init, whose every op compiles on its own."""
  return jax.jit(lambda key: init_variables(model, key, image_size), compiler_options=O0)


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


# ---------------------------------------------------------------------------------------------
# The `ntk-zoo score` subcommand.

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds the `score` subcommand's arguments to `parser`."""
  parser.description = ("NAS trainability scores (condition number of the full NTK and of the "
                        "pseudo-NTK, trace, kernel regression, #params, FLOPs) of NAS-Bench-201 "
                        "cells, on scikit-learn's digits (offline).")
  parser.add_argument("archs", nargs="*", metavar="ARCH",
                      help="NB201 cell strings, e.g. '|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                           "|avg_pool_3x3~0|nor_conv_1x1~1|none~2|'")
  parser.add_argument("--sample", type=int, default=0, metavar="N",
                      help="also score N architectures sampled from the search space")
  parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                      help="tenas: TE-NAS's choices; full: full NTK, inference BN, float64 "
                           "(default)")
  parser.add_argument("--repeats", type=int, help="random inits and batches (preset's default)")
  parser.add_argument("--batch-size", type=int, help="examples per scored batch")
  parser.add_argument("--channels", type=int, help="stem channels C (preset's default)")
  parser.add_argument("--cells", type=int, help="cells per stage N (preset's default)")
  parser.add_argument("--image-size", type=int, help="input side in pixels (preset's default)")
  parser.add_argument("--implementation", default=None, help="ntk_fn implementation")
  parser.add_argument("--seed", type=int, default=0, help="seed of sampling, inits and batches")
  parser.add_argument("--out", type=pathlib.Path, help="directory to write scores.json to")
  return parser


def main(args: argparse.Namespace) -> int:
  """Runs `ntk-zoo score`: prints a table and writes `scores.json` to `--out`. Returns the exit
  status (2 with one line on stderr for bad arguments)."""
  try:
    archs = [parse_arch(a) for a in args.archs] + sample_architectures(args.sample, args.seed)
    if not archs:
      raise ValueError("no architectures: pass NB201 strings or --sample N.")
    preset = get_preset(args.preset)
    network = dataclasses.replace(preset.network, **{
        k: v for k, v in (("channels", args.channels), ("cells_per_stage", args.cells),
                          ("image_size", args.image_size)) if v is not None})
    preset = dataclasses.replace(preset, network=network, **{
        k: v for k, v in (("repeats", args.repeats), ("batch_size", args.batch_size),
                          ("implementation", args.implementation)) if v is not None})
    if args.out is not None:
      args.out.mkdir(parents=True, exist_ok=True)
      probe = args.out / ".write_test"
      probe.write_text("")
      probe.unlink()
    rows = score_architectures(archs, preset, seed=args.seed)
  except (ValueError, OSError) as e:
    print(f"ntk-zoo score: error: {e}", file=sys.stderr)
    return 2
  cols = ("kappa_ntk", "kappa_pseudo", "trace", "kr_accuracy")
  width = max(len(row["arch"]) for row in rows)
  print(f"{'arch':<{width}} " + " ".join(f"{c:>13}" for c in cols) + f" {'params':>8} {'MFLOPs':>8}")
  for row in rows:
    print(f"{row['arch']:<{width}} " + " ".join(f"{row[c + '_mean']:13.4g}" for c in cols)
          + f" {row['params']:8d} {row['flops'] / 1e6:8.2f}")
  if args.out is not None:
    tmp = args.out / "scores.json.tmp"
    tmp.write_text(json.dumps({"preset": dataclasses.asdict(preset), "rows": rows}, indent=1))
    tmp.replace(args.out / "scores.json")
    print(f"wrote {args.out / 'scores.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main(add_arguments(argparse.ArgumentParser("ntk-zoo score")).parse_args()))
