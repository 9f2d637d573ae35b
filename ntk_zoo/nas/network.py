"""NB201's macro network of cells (Flax), its configuration, and compiled inits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntk_zoo.nas.space import Architecture, NUM_NODES, parse_arch


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
