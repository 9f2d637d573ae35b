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

from ntk_zoo.nas.space import (ARCH_FORMAT, Architecture, EDGES, NUM_NODES, OPS, parse_arch,
                               sample_architectures)
from ntk_zoo.nas.network import (Cell, CellNetwork, INITS, NetworkConfig, O0, ReLUConvBN,
                                 ReductionBlock, build, init_fn, init_variables)
from ntk_zoo.nas.scores import (PRESETS, SCORES, ScorePreset, calibrate_batch_stats, digits,
                                forward_flops, get_preset, kernel_fn, kernel_scores, make_apply,
                                score_architecture, score_architectures, split_params)
from ntk_zoo.nas.command import add_arguments, main

__all__ = [
    "ARCH_FORMAT", "EDGES", "INITS", "NUM_NODES", "O0", "OPS", "PRESETS", "SCORES",
    "add_arguments", "Architecture", "build", "calibrate_batch_stats", "Cell", "CellNetwork",
    "digits", "forward_flops", "get_preset", "init_fn", "init_variables", "kernel_fn",
    "kernel_scores", "main", "make_apply", "NetworkConfig", "parse_arch", "ReductionBlock",
    "ReLUConvBN", "sample_architectures", "score_architecture", "score_architectures",
    "ScorePreset", "split_params",
]
