"""What every zoo architecture shares: the one init path, abstract shapes, `Model` wrapping and
the factory plumbing behind a variant table.

* Init: `init_variables` (Linen `module.init`, every collection) and `init_params` (the "params"
  collection by `lazy_init`, compiled once per configuration), both jit-compiled at
  `INIT_COMPILER_OPTIONS` (Haiku's init uses them too).
* Shapes: `abstract_variables` / `param_shapes` compute variable shapes without allocating.
* Models: `linen_model` wraps an initialized Linen module as a `Model` (the layout of
  `adapters.from_linen`); `image_spec` is the NHWC `InputSpec` of an image size.
* Variants: `decode_variant` parses "B/16" for a patch model's table; `register_variant` registers
  one variant's zoo factory (what `ntk_zoo.models.get(name, ...)` calls).

A new architecture is one module file: its modules, a variant table and a `create` factory built
from these, plus a `register_variant` line per registered variant.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models.adapters import from_linen
from ntk_zoo.models.convert import checkpoints
from ntk_zoo.models.model import InputSpec, Model
from ntk_zoo.models.registry import register
from ntk_zoo.ntk.typing import PyTree

if TYPE_CHECKING:
  from _typeshed import DataclassInstance

Differentiate = Literal["params", "all"]
ImageSize = int | tuple[int, int]
Config = TypeVar("Config", bound="DataclassInstance")

# torchvision / timm ImageNet channel statistics (ResNets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# vit_jax / big_vision / timm augreg preprocessing (ViT, Mixer): [0, 1] -> [-1, 1].
SIGNED_MEAN = (0.5, 0.5, 0.5)
SIGNED_STD = (0.5, 0.5, 0.5)

# The inference switch of the zoo's Linen CNNs (ResNet, WRN): BatchNorm on running statistics.
TRAIN_FALSE: Mapping[str, Any] = types.MappingProxyType({"train": False})


def image_shape(image_size: ImageSize) -> tuple[int, int, int]:
  """(H, W, 3) of one image: `image_size` is the side of a square, or (height, width)."""
  if isinstance(image_size, int):
    return (image_size, image_size, 3)
  return (int(image_size[0]), int(image_size[1]), 3)


def image_spec(image_size: ImageSize, dtype: Any, mean: tuple[float, ...],
               std: tuple[float, ...]) -> InputSpec:
  """The `InputSpec` of NHWC RGB images of `image_size`, normalized with `mean` and `std`."""
  return InputSpec(shape=image_shape(image_size), dtype=dtype, mean=mean, std=std)


# ----------------------------------------------------------------------------------------------
# Initialization.

# XLA spends ~10x longer optimizing a Flax/Haiku `init` (one threefry draw per parameter) than
# running it (tiny ResNet on 2 CPU cores: ~20 s compile at the default level, ~2.5 s at level 0;
# tiny Haiku ResNet 43 s vs 6.5 s, measured); `init` runs once, so it is compiled unoptimized.
# Values agree with the default to float32 ulps.
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
# Measured (CPU seconds, 2 shared cores under load): the tiny ViT initializes in ~5.5 s eagerly
# (one compilation per op and shape) but ~1.6 s jit-compiled at level 0; for ViT-B/16 eager (~8 s)
# beats the unoptimized program (~13 s), whose 86M draws then run slowly. So `init_params` takes
# the unoptimized jit for small models (compiled once per configuration) and runs large ones
# eagerly.
_JIT_INIT_MAX_PARAMS = 2_000_000


def _dummy(image_size: ImageSize, dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, *image_shape(image_size)), dtype)


def init_variables(module: nn.Module, image_size: ImageSize, *, seed: int = 0,
                   dtype: Any = jnp.float32) -> PyTree:
  """`module.init(PRNGKey(seed), zeros((1, H, W, 3)))`, jit-compiled at `INIT_COMPILER_OPTIONS`.

  Args:
    module: a Linen module whose `__call__(x)` accepts a batch of images.
    image_size: side of the dummy image (or (height, width)).
    seed: PRNG seed.
    dtype: dtype of the dummy input.

  Returns:
    The module's variables `{collection: tree}` (e.g. "params" and "batch_stats").
  """
  key = jax.random.PRNGKey(seed)
  x = jnp.zeros(_dummy(image_size, dtype).shape, dtype)
  return jax.jit(module.init).lower(key, x).compile(INIT_COMPILER_OPTIONS)(key, x)


@functools.cache
def _compiled_init(module: nn.Module, shape: tuple[int, ...], dtype: Any):
  """`key -> params` compiled at `INIT_COMPILER_OPTIONS`, or None for a large model."""
  x = jax.ShapeDtypeStruct(shape, dtype)
  lowered = jax.jit(lambda k: module.lazy_init(k, x)["params"]).lower(jax.random.PRNGKey(0))
  size = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(lowered.out_info))
  return lowered.compile(INIT_COMPILER_OPTIONS) if size <= _JIT_INIT_MAX_PARAMS else None


def init_params(module: nn.Module, image_size: ImageSize, *, seed: int = 0,
                dtype: Any = jnp.float32) -> PyTree:
  """The "params" collection of `module.lazy_init(PRNGKey(seed), x)` (no forward computation).

  Compiled once per (module, input shape, dtype) for models of at most 2M parameters, run
  eagerly for larger ones (see `_JIT_INIT_MAX_PARAMS`).

  Args:
    module: a Linen module with `__call__(images)` and no collection other than "params".
    image_size: side of the (abstract) input images, or (height, width).
    seed: PRNG seed.
    dtype: input dtype.

  Returns:
    The parameter tree; the same values for the same (module, image_size, seed) on every call.
  """
  key = jax.random.PRNGKey(seed)
  x = _dummy(image_size, dtype)
  compiled = _compiled_init(module, tuple(x.shape), jnp.dtype(dtype))
  if compiled is not None:
    return compiled(key)
  return module.lazy_init(key, x)["params"]


def abstract_variables(module: nn.Module, image_size: ImageSize = 224,
                       dtype: Any = jnp.float32) -> PyTree:
  """The module's variables as `jax.ShapeDtypeStruct`s (nothing is allocated or computed)."""
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), _dummy(image_size, dtype))


def param_shapes(module: nn.Module, image_size: ImageSize = 224,
                 dtype: Any = jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat `{"a/b/kernel": ShapeDtypeStruct}` of the module's "params" collection."""
  return checkpoints.flatten(abstract_variables(module, image_size, dtype)["params"])


# ----------------------------------------------------------------------------------------------
# Models.


def linen_model(module: nn.Module, variables: Mapping[str, PyTree], *,
                input_spec: InputSpec, num_classes: int, name: str,
                differentiate: Differentiate = "params",
                apply_kwargs: Mapping[str, Any] | None = TRAIN_FALSE) -> Model:
  """Wraps an initialized zoo Linen module as a `Model` in inference mode.

  A thin front to `adapters.from_linen`, so every Linen zoo model has the adapters' layout and
  `flax_checkpoints.load_into` can re-bind its BatchNorm statistics.

  Args:
    module: the Linen module.
    variables: its variables, e.g. {"params": ..., "batch_stats": ...}.
    input_spec: the model's input description.
    num_classes: number of logits.
    name: model name.
    differentiate: "params": `Model.params = {"params": ...}` (conv kernels, BatchNorm
      scale/bias, head) and the other collections (BatchNorm running statistics) are closed over
      as `Model.state = {"batch_stats": ...}`. "all": `Model.params` holds every collection
      (running statistics included) and `state` is empty.
    apply_kwargs: keyword arguments of every `module.apply` call: the inference switch
      `{"train": False}` (ResNets, WRNs), or None for modules without one (ViT, Mixer).

  Returns:
    A `Model` whose `apply(params, x)` maps (N, *input_spec.shape) to (N, num_classes) logits in
    inference mode; equal modules share one `apply` function (see `adapters.BoundApply`).

  Raises:
    ValueError: `differentiate` is neither "params" nor "all".
  """
  collections: tuple[str, ...]
  if differentiate == "params":
    collections = ("params",)
  elif differentiate == "all":
    collections = tuple(variables)
  else:
    raise ValueError(f"differentiate must be 'params' or 'all'; got {differentiate!r}.")
  return from_linen(module, variables, input_spec=input_spec, num_classes=num_classes,
                    differentiate=collections, apply_kwargs=apply_kwargs, name=name)


def patch_model(module: Any, params: PyTree, image_size: ImageSize, name: str) -> Model:
  """A ViT-like `module` (no state, [-1, 1] inputs) with its "params" tree as a `Model`."""
  spec = image_spec(image_size, module.dtype, SIGNED_MEAN, SIGNED_STD)
  return linen_model(module, {"params": params}, input_spec=spec,
                     num_classes=module.num_classes, name=name, apply_kwargs=None)


def create_patch_model(module: Any, *, image_size: ImageSize, seed: int, name: str) -> Model:
  """A randomly initialized ViT-like `module` (see `patch_model`) as a `Model`."""
  params = init_params(module, image_size, seed=seed, dtype=module.dtype)
  return patch_model(module, params, image_size, name)


# ----------------------------------------------------------------------------------------------
# Variant tables and registration.


def decode_variant(variant: str | Config, *, config: type[Config],
                   widths: Mapping[str, tuple[int, ...]], tiny: Config, family: str) -> Config:
  """Parses a patch model's variant: "B/16" (any width of `widths`, any patch size) or "tiny[/p]".

  Args:
    variant: "{width}/{patch}" string, or a `config` instance (returned as is).
    config: the size dataclass; `config(*widths[width], patch_size=p)` builds one.
    widths: width name -> the config's fields before `patch_size`.
    tiny: the test-size config ("tiny"; "tiny/p" replaces its patch size).
    family: the model's name in messages, e.g. "ViT".

  Raises:
    ValueError: for an unknown width or a malformed string.
  """
  if isinstance(variant, config):
    return variant
  m = re.fullmatch(r"([A-Za-z]+)(?:/(\d+))?", str(variant).strip())
  if m is None:
    raise ValueError(f"Cannot parse {family} variant {variant!r}; expected e.g. 'B/16' or 'tiny'.")
  width, patch = m.group(1), m.group(2)
  if width.lower() == "tiny":
    return tiny if patch is None else dataclasses.replace(tiny, patch_size=int(patch))
  if width not in widths or patch is None:
    raise ValueError(f"Unknown {family} variant {variant!r}. Use '<width>/<patch>' with width in "
                     f"{sorted(widths)} (e.g. 'B/16'), or 'tiny'.")
  # `config` is a dataclass whose last field is `patch_size` (mypy sees only the bound).
  return config(*widths[width], patch_size=int(patch))  # type: ignore[call-arg]


def default_name(prefix: str, variant: Any) -> str:
  """"vit_B/16" for a variant string, "vit" for a config object."""
  return f"{prefix}_{variant}" if isinstance(variant, str) else prefix


def register_variant(name: str, create: Callable[..., Model], *args: Any,
                     keywords: Sequence[str] | None = None, doc: str = "",
                     **defaults: Any) -> Callable[..., Model]:
  """Registers `name` as the zoo factory `create(*args, **kwargs, name=name)`; returns it.

  Args:
    name: the zoo name (`ntk_zoo.models.get(name)`), also the built model's name.
    create: the family's factory, `create(*args, *, <keywords>, name)`.
    *args: the variant, as `create` takes it (e.g. "B/16", or a depth and a width).
    keywords: the keyword arguments of `create` the factory accepts (default: all but `name`).
    doc: the factory's docstring, a `str.format` template of `name`, the variant `{0}`, ... and
      the keywords' defaults, e.g. "ViT-{0}; image_size (default {image_size})".
    **defaults: this variant's defaults, replacing `create`'s (e.g. `image_size=16`).

  Returns:
    `factory(**kwargs) -> Model`, keyword-only, whose signature (what `get` inspects for `dtype`)
    lists the accepted keywords with this variant's defaults.
  """
  params = inspect.signature(create).parameters
  if keywords is None:
    keywords = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k != "name"]
  unknown = sorted(set(defaults) - set(keywords))
  if unknown:
    raise ValueError(f"register_variant({name!r}): defaults {unknown} are not keywords of "
                     f"{create.__name__} ({list(keywords)}).")
  signature = inspect.Signature([params[k].replace(default=defaults.get(k, params[k].default))
                                 for k in keywords], return_annotation=Model)

  def factory(**kwargs: Any) -> Model:
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    return create(*args, **bound.arguments, name=name)

  factory.__name__ = factory.__qualname__ = name
  factory.__doc__ = doc.format(*args, name=name, **{k: p.default for k, p in
                                                    signature.parameters.items()})
  factory.__signature__ = signature  # type: ignore[attr-defined]
  return register(name)(factory)


# What the registered factories of a ViT-like family accept (`get("vit_b16", image_size=...)`).
PATCH_KEYWORDS = ("num_classes", "image_size", "seed", "dtype", "gelu_approximate")


def register_patch_variant(name: str, create: Callable[..., Model], variant: str, *, title: str,
                           **defaults: Any) -> Callable[..., Model]:
  """`register_variant` for a ViT-like family: `PATCH_KEYWORDS`, a docstring naming `title`.

  Args:
    name: the zoo name, e.g. "vit_b16".
    create: the family's `create(variant, *, num_classes, image_size, ..., name)`.
    variant: e.g. "B/16".
    title: what the model is, with `{0}` for the variant: "ViT-{0} (class token, no pre_logits)".
    **defaults: this variant's defaults (e.g. `image_size=16, num_classes=10`).
  """
  family = create.__module__.rsplit(".", 1)[-1]
  doc = (f"{title} as a randomly initialized `Model`.\n\nArgs: num_classes (default "
         "{num_classes}), image_size (default {image_size}), seed, dtype, gelu_approximate: see "
         f"`{family}.create`.\n\nReturns: `Model`; apply(params, x): (N, H, W, 3) -> "
         "(N, num_classes).")
  return register_variant(name, create, variant, keywords=PATCH_KEYWORDS,
                          doc=doc, **defaults)
