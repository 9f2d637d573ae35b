"""Haiku's ResNet-50 / ResNet-152 (`hk.nets`) and a tiny ResNet, as zoo models through `from_haiku`.

Registered as `haiku_resnet50`, `haiku_resnet152` and `haiku_resnet_tiny`:

  >>> model = ntk_zoo.models.get("haiku_resnet50", num_classes=10, image_size=64)
  >>> logits = model.apply(model.params, model.input_spec.dummy(2))     # (2, 10)

The networks are Haiku's own classes (ResNet v1, bottleneck blocks, BatchNorm), so parameter names
are those of Haiku checkpoints (`res_net50/~/block_group_0/~/block_0/~/conv_0/w`, ...). In the
`Model`, `params` holds every Haiku parameter (conv kernels, BatchNorm scale/offset, logits) and
`state["state"]` the BatchNorm moving averages, read in inference mode (`is_training=False`).

Departures from `hk.nets` defaults, both for a non-degenerate NTK at initialization:
* the logits layer uses `hk.Linear`'s default truncated-normal init (stddev 1/sqrt(fan_in))
  instead of zeros (`zero_init_logits=True` restores Haiku's choice);
* the BatchNorm moving averages start at mean 0 / variance 1 (as a fresh Flax or torch network)
  instead of the statistics of the dummy batch `init` ran on.
Haiku's zero init of the last BatchNorm scale in each bottleneck block is kept.

Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
Table 1 (ResNet-50: 25.6M parameters, ResNet-152: 60.2M, both with a 1000-way head).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models import common
from ntk_zoo.models.adapters import from_haiku
from ntk_zoo.models.common import IMAGENET_MEAN, IMAGENET_STD
from ntk_zoo.models.model import Model
from ntk_zoo.ntk.typing import PyTree

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VARIANTS", "create", "haiku_resnet152",
           "haiku_resnet50", "haiku_resnet_tiny", "init", "param_shapes", "transformed"]

# `init` runs one forward pass; parameter shapes do not depend on the image size, so it runs on
# images at most this large.
_INIT_SIZE = 32


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown Haiku ResNet variant {variant!r}; known: {sorted(VARIANTS)}.")


def transformed(variant: str, num_classes: int = 1000, *,
                zero_init_logits: bool = False) -> hk.TransformedWithState:
  """`hk.transform_with_state` of `x, is_training -> logits` for a ResNet variant.

  Args:
    variant: "50", "152" or "tiny".
    num_classes: number of logits O.
    zero_init_logits: initialize the logits weights to zero (Haiku's default) instead of
      truncated normal.

  Returns:
    A transformed pair; `apply(params, state, rng, x, is_training=...)` maps x (N, H, W, 3) to
    ((N, O) logits, new state).
  """
  _check_variant(variant)
  logits_config = {"w_init": jnp.zeros if zero_init_logits else None}

  def forward(x, is_training: bool):
    net = VARIANTS[variant](num_classes=num_classes, logits_config=logits_config)
    return net(x, is_training=is_training)

  return hk.transform_with_state(forward)


def _fresh_statistics(state: PyTree) -> PyTree:
  """Moving averages reset to mean 0 / variance 1 with an empty history (counter 0)."""
  out = {}
  for module_name, bundle in state.items():
    if module_name.endswith("var_ema"):
      fill = jnp.ones_like
    elif module_name.endswith("mean_ema"):
      fill = jnp.zeros_like
    else:
      out[module_name] = bundle
      continue
    out[module_name] = {"average": fill(bundle["average"]),
                        "hidden": jnp.zeros_like(bundle["hidden"]),
                        "counter": jnp.zeros_like(bundle["counter"])}
  return out


def _init_fn(variant: str, num_classes: int, image_size: int,
             zero_init_logits: bool) -> Callable[[jax.Array], tuple[PyTree, PyTree]]:
  """`seed -> (params, state)`, initializing on one all-zero image batch (1, s, s, 3)."""
  net = transformed(variant, num_classes, zero_init_logits=zero_init_logits)
  size = min(image_size, _INIT_SIZE)
  images = jnp.zeros((1, size, size, 3), jnp.float32)

  def fn(seed):
    params, state = net.init(jax.random.PRNGKey(seed), images, is_training=True)
    return params, _fresh_statistics(state)

  return fn


def init(variant: str, num_classes: int = 1000, *, seed: int = 0, image_size: int = 224,
         zero_init_logits: bool = False) -> tuple[PyTree, PyTree]:
  """Initial Haiku (params, state) of a ResNet variant.

  The initializer is compiled at `common.INIT_COMPILER_OPTIONS` (XLA optimization level 0):
  Haiku's truncated-normal initializers otherwise take most of the build time on CPU (e.g. 43 s
  vs 6.5 s for the tiny variant on a loaded 2-core machine); it runs once, on one small batch.

  Args:
    variant: "50", "152" or "tiny".
    num_classes: number of logits O.
    seed: PRNG seed of the initialization.
    image_size: side of the input images (only bounds the size `init` runs on).
    zero_init_logits: see `transformed`.

  Returns:
    Haiku params `{module_name: {name: array}}` and state (BatchNorm moving averages, mean 0 and
    variance 1).
  """
  compiled = _compiled_init(variant, num_classes, min(image_size, _INIT_SIZE), zero_init_logits)
  return compiled(jnp.asarray(seed, jnp.uint32))


@functools.lru_cache(maxsize=8)
def _compiled_init(variant: str, num_classes: int, size: int,
                   zero_init_logits: bool) -> Callable[[jax.Array], tuple[PyTree, PyTree]]:
  """`_init_fn` compiled once per configuration (the seed is an argument)."""
  fn = _init_fn(variant, num_classes, size, zero_init_logits)
  seed = jax.ShapeDtypeStruct((), jnp.uint32)
  return jax.jit(fn).lower(seed).compile(common.INIT_COMPILER_OPTIONS)


def param_shapes(variant: str, num_classes: int = 1000,
                 image_size: int = 224) -> tuple[PyTree, PyTree]:
  """Shapes of `init`'s (params, state) as `jax.ShapeDtypeStruct`s, without allocating them."""
  fn = _init_fn(variant, num_classes, image_size, zero_init_logits=False)
  return jax.eval_shape(fn, jnp.asarray(0, jnp.uint32))


def create(variant: str, *, num_classes: int = 1000, image_size: int = 224, seed: int = 0,
           zero_init_logits: bool = False, name: str | None = None) -> Model:
  """A Haiku ResNet as a `Model` in inference mode (BatchNorm on its moving averages).

  Args:
    variant: "50", "152" or "tiny".
    num_classes: number of logits O.
    image_size: input images are (image_size, image_size, 3), ImageNet-normalized by
      `input_spec.preprocess`.
    seed: PRNG seed of the initialization.
    zero_init_logits: see `transformed`.
    name: model name (default "haiku_resnet50", "haiku_resnet152", "haiku_resnet_tiny").

  Returns:
    A `Model` whose `apply(params, x)` maps x (N, image_size, image_size, 3) to logits
    (N, num_classes); `params` are all Haiku parameters, `state["state"]` the moving averages.
  """
  params, state = init(variant, num_classes, seed=seed, image_size=image_size,
                       zero_init_logits=zero_init_logits)
  spec = common.image_spec(image_size, np.float32, IMAGENET_MEAN, IMAGENET_STD)
  suffix = variant if variant != "tiny" else "_tiny"
  return from_haiku(transformed(variant, num_classes, zero_init_logits=zero_init_logits),
                    params, state, input_spec=spec, num_classes=num_classes,
                    apply_kwargs={"is_training": False}, name=name or f"haiku_resnet{suffix}")


# ----------------------------------------------------------------------------------------------
# Variants.

# variant -> constructor `(num_classes, logits_config) -> hk.nets.ResNet` (an hk.Module).
VARIANTS: dict[str, Callable[..., hk.nets.ResNet]] = {
    # He et al. 2016, Table 1: [3, 4, 6, 3] bottleneck blocks, 25,557,032 params (1000 classes).
    "50": hk.nets.ResNet50,
    # He et al. 2016, Table 1: [3, 8, 36, 3] bottleneck blocks, 60,192,808 params (1000 classes).
    "152": hk.nets.ResNet152,
    # For tests: one basic (non-bottleneck) block per group, 4/8/16/32 channels.
    "tiny": functools.partial(hk.nets.ResNet, blocks_per_group=(1, 1, 1, 1),
                              channels_per_group=(4, 8, 16, 32), bottleneck=False,
                              use_projection=(True, True, True, True), name="res_net_tiny"),
}

# The registered factories take these keywords of `create`.
_KEYWORDS = ("num_classes", "image_size", "seed")

haiku_resnet50 = common.register_variant(
    "haiku_resnet50", create, "50", keywords=_KEYWORDS,
    doc="Haiku ResNet-50 (25,557,032 params with 1000 classes); see `create`.")
haiku_resnet152 = common.register_variant(
    "haiku_resnet152", create, "152", keywords=_KEYWORDS,
    doc="Haiku ResNet-152 (60,192,808 params with 1000 classes); see `create`.")
haiku_resnet_tiny = common.register_variant(
    "haiku_resnet_tiny", create, "tiny", keywords=_KEYWORDS,
    doc="A tiny Haiku ResNet (one basic block per group, 4-32 channels) for tests; see "
        "`create`.")
