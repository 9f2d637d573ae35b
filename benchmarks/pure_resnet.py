"""ResNet-18/50 as pure JAX functions, importable by ntk_zoo's venv and by the peer's (JAX 0.4.23).

The benchmark model both libraries differentiate: an explicit nested params dict and
`jax.lax.conv_general_dilated` / `jax.lax.reduce_window`, nothing else (no Flax, no Haiku), so
neural-tangents 0.6.5 on JAX 0.4.23 and ntk_zoo on current JAX trace the same function with
bit-identical parameters and inputs (all drawn in float64 by numpy's PCG64, then cast).

Architecture: torchvision's ResNet (the same as `ntk_zoo.models.resnet.ResNet`, same parameter
names, so `as_flax_variables` loads these numbers into the zoo's Flax module unchanged):

* stem: 7x7/2 conv (pad 3, no bias) - BN - ReLU - 3x3/2 max-pool (pad 1);
* stages of BasicBlocks (conv3x3-BN-ReLU-conv3x3-BN) or v1.5 Bottlenecks (conv1x1-BN-ReLU-
  conv3x3(stride)-BN-ReLU-conv1x1-BN), + identity or conv1x1(stride)-BN shortcut, ReLU;
  64 filters doubled every stage; stages after the first start with stride 2;
* global average pool, Dense head with bias.

BatchNorm is in inference mode: `(x - mean) * (scale / sqrt(var + 1e-5)) + bias` with fixed,
non-differentiated statistics (`stats`, closed over by `make_apply`); `scale` and `bias` are
parameters (as in Flax/torch, where they are trainable). Convs are in standard parameterization
(He-normal, fan-out, as torchvision); BN scale ~ 1 ± 0.1 except the last BN of each residual
branch (~0.2) so activations stay O(1) through 16 blocks without real batch statistics.

Sizes (10-way head): ResNet-18 11,181,642 parameters; ResNet-50 23,528,522 (torchvision's
25,557,032 with 1000 classes). NHWC inputs, HWIO kernels.

Uses only APIs stable since JAX 0.4: `jax.lax.conv_general_dilated`, `jax.lax.reduce_window`,
`jax.nn.relu`, `jax.numpy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ARCHS = {
    # name: (block, stage sizes)
    "rn18": ("basic", (2, 2, 2, 2)),
    "rn50": ("bottleneck", (3, 4, 6, 3)),
    "rn152": ("bottleneck", (3, 8, 36, 3)),
}
ZOO_NAMES = {"rn18": "resnet18", "rn50": "resnet50", "rn152": "resnet152"}
DEFAULT_IMAGE_SIZE = {"rn18": 32, "rn50": 224, "rn152": 224}
EPS = 1e-5
_EXPANSION = {"basic": 1, "bottleneck": 4}


def _layout(arch: str, num_classes: int, num_filters: int = 64):
  """[(path, kind, shape-info)] in forward order; kind: conv (k, cin, cout), bn (c, last), fc."""
  block, stages = ARCHS[arch]
  out = [("conv1", "conv", (7, 3, num_filters)), ("bn1", "bn", (num_filters, False))]
  cin = num_filters
  for i, nb in enumerate(stages):
    planes = num_filters * 2 ** i
    cout = planes * _EXPANSION[block]
    for j in range(nb):
      stride = 2 if i > 0 and j == 0 else 1
      p = f"layer{i + 1}_{j}"
      if block == "basic":
        out += [(f"{p}/conv1", "conv", (3, cin, planes)), (f"{p}/bn1", "bn", (planes, False)),
                (f"{p}/conv2", "conv", (3, planes, planes)), (f"{p}/bn2", "bn", (planes, True))]
      else:
        out += [(f"{p}/conv1", "conv", (1, cin, planes)), (f"{p}/bn1", "bn", (planes, False)),
                (f"{p}/conv2", "conv", (3, planes, planes)), (f"{p}/bn2", "bn", (planes, False)),
                (f"{p}/conv3", "conv", (1, planes, cout)), (f"{p}/bn3", "bn", (cout, True))]
      if stride != 1 or cin != cout:
        out += [(f"{p}/downsample_conv", "conv", (1, cin, cout)),
                (f"{p}/downsample_bn", "bn", (cout, False))]
      cin = cout
  out.append(("fc", "fc", (cin, num_classes)))
  return out


def _set(tree: dict, path: str, value: dict) -> None:
  *parents, leaf = path.split("/")
  for k in parents:
    tree = tree.setdefault(k, {})
  tree[leaf] = value


def init(arch: str, num_classes: int, seed: int = 0, dtype=np.float32) -> tuple[dict, dict]:
  """(params, stats): numpy float32 nested dicts with the zoo's/Flax's names.

  params: `conv*`: {"kernel": (k, k, cin, cout)}; `bn*`: {"scale", "bias"} (c,); `fc`:
  {"kernel": (cin, O), "bias": (O,)}. stats: `bn*`: {"mean", "var"} (c,), fixed.
  """
  rng = np.random.default_rng(seed)
  params: dict = {}
  stats: dict = {}
  for path, kind, info in _layout(arch, num_classes):
    if kind == "conv":
      k, cin, cout = info
      std = np.sqrt(2.0 / (k * k * cout))  # He normal, fan_out (torchvision/zoo init).
      _set(params, path, {"kernel": (std * rng.standard_normal((k, k, cin, cout))).astype(dtype)})
    elif kind == "bn":
      c, last = info
      gamma = (0.2 if last else 1.0) * (1.0 + 0.1 * rng.standard_normal(c))
      _set(params, path, {"scale": gamma.astype(dtype),
                          "bias": (0.1 * rng.standard_normal(c)).astype(dtype)})
      _set(stats, path, {"mean": (0.1 * rng.standard_normal(c)).astype(dtype),
                         "var": rng.uniform(0.5, 1.5, c).astype(dtype)})
    else:
      cin, o = info
      bound = 1.0 / np.sqrt(cin)
      _set(params, path, {"kernel": rng.uniform(-bound, bound, (cin, o)).astype(dtype),
                          "bias": rng.uniform(-bound, bound, o).astype(dtype)})
  return params, stats


def inputs(n: int, image_size: int, seed: int = 1, dtype=np.float32):
  """Two batches x1, x2 of shape (n, image_size, image_size, 3), standard normal."""
  rng = np.random.default_rng(seed)
  shape = (n, image_size, image_size, 3)
  return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype))


def num_params(params) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.size(l) for l in jax.tree_util.tree_leaves(params)))


def make_apply(arch: str, stats: dict):
  """`apply(params, x) -> logits (N, O)` for NHWC `x`, BN statistics `stats` closed over."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  block, stages = ARCHS[arch]
  # Fixed statistics -> constants: (x - mean) * (scale * inv_std) + bias.
  consts = jax.tree_util.tree_map(np.asarray, stats)

  def conv(x, p, stride):
    w = p["kernel"]
    pad = w.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def bn(x, p, s):
    inv_std = (1.0 / np.sqrt(s["var"].astype(np.float64) + EPS)).astype(np.float32)
    return (x - s["mean"]) * (p["scale"] * inv_std) + p["bias"]

  def max_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))

  def basic(x, p, s, stride):
    y = jax.nn.relu(bn(conv(x, p["conv1"], stride), p["bn1"], s["bn1"]))
    y = bn(conv(y, p["conv2"], 1), p["bn2"], s["bn2"])
    return jax.nn.relu(y + shortcut(x, p, s, stride))

  def bottleneck(x, p, s, stride):
    y = jax.nn.relu(bn(conv(x, p["conv1"], 1), p["bn1"], s["bn1"]))
    y = jax.nn.relu(bn(conv(y, p["conv2"], stride), p["bn2"], s["bn2"]))
    y = bn(conv(y, p["conv3"], 1), p["bn3"], s["bn3"])
    return jax.nn.relu(y + shortcut(x, p, s, stride))

  def shortcut(x, p, s, stride):
    if "downsample_conv" not in p:
      return x
    return bn(conv(x, p["downsample_conv"], stride), p["downsample_bn"], s["downsample_bn"])

  block_fn = basic if block == "basic" else bottleneck

  def apply(params, x):
    s = consts
    h = jax.nn.relu(bn(conv(x, params["conv1"], 2), params["bn1"], s["bn1"]))
    h = max_pool(h)
    for i, nb in enumerate(stages):
      for j in range(nb):
        name = f"layer{i + 1}_{j}"
        h = block_fn(h, params[name], s[name], 2 if i > 0 and j == 0 else 1)
    h = jnp.mean(h, axis=(1, 2))
    return h @ params["fc"]["kernel"] + params["fc"]["bias"]

  return apply


def as_flax_variables(params: dict, stats: dict) -> dict[str, Any]:
  """`{"params", "batch_stats"}` for `ntk_zoo.models.resnet.ResNet` (same names and shapes)."""
  return {"params": params, "batch_stats": stats}


def model(arch: str, num_classes: int, seed: int = 0):
  """(apply, params as jnp arrays): the benchmark model in one call."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params, stats = init(arch, num_classes, seed)
  return make_apply(arch, stats), jax.tree_util.tree_map(jnp.asarray, params)
