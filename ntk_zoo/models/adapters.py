"""Adapters turning Flax Linen / Flax NNX / Haiku models into a `Model` (a pure `apply(params, x)`).

Every adapter returns the model in inference mode: no dropout randomness, BatchNorm on its running
statistics, nothing mutated. The variables are split in two:

* `params`: the pytree the NTK is taken over (what `differentiate` selects);
* `state`: everything else (BatchNorm statistics, frozen parameters, RNG counters), closed over by
  `apply`.

`apply` is a `BoundApply`: a callable holding a pure `fn(params, state, x)` and the `state` it is
bound to, so a checkpoint loader can re-bind new state (`model.apply.rebind(state)`) without
rebuilding the module. Two `BoundApply`s are equal when they hold the same `fn` and the very same
state arrays, and `from_linen` gives equal modules (with equal `apply_kwargs`) one shared `fn`:
models of one configuration without state (or sharing it) thus share `jax.jit` caches.

Layouts of `params` / `state`:

* `from_linen`: `params = {collection: tree}` for the collections in `differentiate`, e.g.
  `{"params": ...}`; `state` = the other collections, e.g. `{"batch_stats": ...}`.
* `from_nnx`: `params` = pure nested dict (`nnx.to_pure_dict`) of the variables `differentiate`
  selects; `state` = pure nested dict of the rest (BatchNorm statistics, RNG counters).
* `from_haiku`: `params` = the Haiku params (`{module_name: {name: array}}`) the predicate
  selects; `state = {"params": frozen params, "state": Haiku state}`.

Example:
  >>> module = MyLinenNet(num_classes=10)
  >>> variables = module.init(jax.random.PRNGKey(0), x, train=False)
  >>> model = from_linen(module, variables, input_spec=InputSpec((32, 32, 3)),
  ...                    apply_kwargs={"train": False})
  >>> logits = model.apply(model.params, x)          # (N, 10)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ntk_zoo.models.model import InputError, InputSpec, Model
from ntk_zoo.ntk.typing import PyTree

__all__ = ["AdapterError", "BoundApply", "from_haiku", "from_linen", "from_nnx"]


class AdapterError(ValueError):
  """A framework model could not be turned into a `Model` (bad collection, filter or input)."""


@dataclasses.dataclass(frozen=True, eq=False)
class BoundApply:
  """`apply(params, x) = fn(params, state, x)` with `state` bound; pure and jit-able.

  Every call first checks its arguments (static shapes, dtypes and keys only: nothing is
  added to the computation) and raises `InputError` naming the fix for the usual mistakes:
  `params["params"]` passed instead of `params`, integer (unpreprocessed) images, NCHW or
  wrong-channel images, and (when the model then fails) inputs of another size than it was
  built for.

  Attributes:
    fn: pure `fn(params, state, x) -> logits`, x of shape (N, *input_spec.shape), logits (N, O).
    state: the non-differentiated variables `fn` is evaluated with.
    input_spec: what `x` should look like (None: not checked).
    params_keys: the top-level keys of the model's `params` (None: not checked).
    name: the model's name, for messages.
  """
  fn: Callable[[PyTree, PyTree, Any], jax.Array]
  state: PyTree
  input_spec: InputSpec | None = None
  params_keys: tuple[str, ...] | None = None
  name: str = "model"

  def _key(self) -> tuple[Any, ...]:
    leaves, treedef = jax.tree_util.tree_flatten(self.state)
    return self.fn, treedef, leaves, self.input_spec, self.params_keys

  def __eq__(self, other: object) -> bool:
    """Same `fn` and the same state arrays (identical objects): then calls are identical, and
    `jax.jit` may reuse one trace (whose constants are those arrays) for both."""
    if not isinstance(other, BoundApply):
      return NotImplemented
    fn, treedef, leaves, *checks = self._key()
    other_fn, other_treedef, other_leaves, *other_checks = other._key()
    return (fn is other_fn and treedef == other_treedef and checks == other_checks
            and all(a is b for a, b in zip(leaves, other_leaves)))

  def __hash__(self) -> int:
    fn, treedef, leaves, *checks = self._key()
    return hash((id(fn), treedef, tuple(id(leaf) for leaf in leaves), *checks))

  def __call__(self, params: PyTree, x: Any) -> jax.Array:
    """Returns the (N, O) logits of inputs x (N, *input_spec.shape)."""
    self._check_params(params)
    if self.input_spec is None:
      return self.fn(params, self.state, x)
    self.input_spec.check(x, f"Model {self.name!r}")
    try:
      return self.fn(params, self.state, x)
    except Exception as e:  # noqa: BLE001  (re-raised as is unless x's shape explains it)
      message = self.input_spec.mismatch(x, f"Model {self.name!r}")
      if message is None:
        raise
      raise InputError(f"{message}\n  (The model failed with {type(e).__name__}: {e})") from e

  def _check_params(self, params: PyTree) -> None:
    if self.params_keys is None or not isinstance(params, Mapping):
      return
    missing = sorted(set(self.params_keys) - set(params))
    if not missing:
      return
    got = sorted(str(k) for k in params)
    shown = ", ".join(got[:8]) + (", ..." if len(got) > 8 else "")
    if missing == ["params"]:
      raise InputError(
          f"Model {self.name!r}: params has top-level keys [{shown}] but no 'params': pass the "
          "whole variables dict `model.params`, not `model.params['params']` (Linen models keep "
          "Flax's layout {'params': tree}).")
    raise InputError(
        f"Model {self.name!r}: params lacks the top-level keys {missing} of `model.params` "
        f"(got [{shown}]). Pass `model.params`, or a pytree with its structure.")

  def rebind(self, state: PyTree) -> BoundApply:
    """The same function (and checks) bound to another `state` (same tree structure)."""
    return dataclasses.replace(self, state=state)


def _as_input_spec(input_spec: InputSpec | Sequence[int]) -> InputSpec:
  if isinstance(input_spec, InputSpec):
    return input_spec
  return InputSpec(shape=tuple(int(d) for d in input_spec))


def _finish(fn: Callable[[PyTree, PyTree, Any], jax.Array], params: PyTree, state: PyTree, *,
            input_spec: InputSpec, num_classes: int | None, name: str, framework: str,
            hint: str) -> Model:
  """Checks `fn` on a dummy input (abstractly, no FLOPs) and builds the `Model`.

  Raises:
    AdapterError: if applying fails, the output is not (N, O), or O != num_classes.
  """
  keys = tuple(sorted(str(k) for k in params)) if isinstance(params, Mapping) else None
  apply = BoundApply(fn, state, input_spec, keys, name)
  batch = 2
  dummy = jax.ShapeDtypeStruct((batch, *input_spec.shape), input_spec.dtype)
  tried = f"a dummy input of shape {dummy.shape} and dtype {jnp.dtype(dummy.dtype).name}"
  try:
    out = jax.eval_shape(apply, params, dummy)
  except Exception as e:  # noqa: BLE001  (any framework error is re-raised with context)
    raise AdapterError(
        f"{framework} model {name!r}: applying it to {tried} (input_spec.shape={input_spec.shape} "
        f"plus a batch axis) failed with {type(e).__name__}: {e}\n  Fix: check input_spec; {hint}"
    ) from e
  if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 2 or out.shape[0] != batch:
    got = jax.tree.map(lambda s: s.shape, out)
    raise AdapterError(
        f"{framework} model {name!r}: on {tried} it returned {got}; a Model must return one "
        f"logits array of shape (N, num_classes) = ({batch}, O).")
  if num_classes is not None and out.shape[1] != num_classes:
    raise AdapterError(
        f"{framework} model {name!r}: num_classes={num_classes} was given but the model returns "
        f"{out.shape[1]} logits per example (output shape {out.shape} on {tried}).")
  return Model(apply=apply, params=params, state=state, input_spec=input_spec,
               num_classes=int(out.shape[1]), name=name)


# ----------------------------------------------------------------------------------------------
# Flax Linen.


def from_linen(module: Any, variables: Mapping[str, PyTree], *,
               input_spec: InputSpec | Sequence[int], num_classes: int | None = None,
               differentiate: Sequence[str] | str = ("params",),
               apply_kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> Model:
  """Wraps a Flax Linen module and its variables as a `Model` in inference mode.

  `apply(params, x)` calls `module.apply({**params, **state}, x, **apply_kwargs)` with
  `mutable=False` and no RNGs, so dropout must be deterministic and BatchNorm must use its running
  averages: pass the module's own switch, e.g. `apply_kwargs={"train": False}` or
  `{"deterministic": True}`.

  Args:
    module: a `flax.linen.Module`.
    variables: `module.init(...)` output, `{collection: tree}` (e.g. "params", "batch_stats").
    input_spec: shape (H, W, C) of one example (or an `InputSpec`); the batch axis is added.
    num_classes: number of logits O; inferred from the output shape when None.
    differentiate: collections that form `params` (the NTK is taken over them), e.g. ("params",)
      or ("params", "batch_stats"); the others become `state`.
    apply_kwargs: keyword arguments for every `module.apply` call (default none).
    name: model name (default: the module's class name).

  Returns:
    A `Model` with `params = {c: variables[c] for c in differentiate}`, `state` the other
    collections, and `apply(params, x)` of x (N, *input_spec.shape) giving logits (N, O).

  Raises:
    AdapterError: a requested collection is missing, or applying to a dummy input fails.
  """
  from flax.core import unfreeze  # pylint: disable=g-import-not-at-top

  input_spec = _as_input_spec(input_spec)
  name = name or type(module).__name__
  if isinstance(differentiate, str):
    differentiate = (differentiate,)
  # unfreeze passes anything but a dict/FrozenDict through unchanged (checked just below);
  # flax annotates its argument as FrozenDict | dict only.
  variables = unfreeze(variables)  # type: ignore[arg-type]
  if not isinstance(variables, Mapping):
    raise AdapterError(f"Linen model {name!r}: `variables` must be a mapping "
                       f"{{collection: tree}} as returned by module.init, got {type(variables)}.")
  missing = [c for c in differentiate if c not in variables]
  if missing:
    raise AdapterError(
        f"Linen model {name!r}: differentiate={tuple(differentiate)} names collection(s) "
        f"{missing} that the variables do not have; available collections: {sorted(variables)}.")
  params = {c: variables[c] for c in differentiate}
  state = {c: v for c, v in variables.items() if c not in params}
  fn = _linen_fn(module, tuple(sorted((apply_kwargs or {}).items())))
  return _finish(fn, params, state, input_spec=input_spec, num_classes=num_classes, name=name,
                 framework="Linen",
                 hint="if the module takes a train/deterministic flag, pass it in apply_kwargs, "
                      "e.g. apply_kwargs={'train': False}.")


def _make_linen_fn(module: Any, kwargs: tuple[tuple[str, Any], ...]
                   ) -> Callable[[PyTree, PyTree, Any], jax.Array]:
  kw = dict(kwargs)

  def fn(params, state, x):
    return module.apply({**params, **state}, x, mutable=False, **kw)

  return fn


_cached_linen_fn = functools.lru_cache(maxsize=256)(_make_linen_fn)


def _linen_fn(module: Any, kwargs: tuple[tuple[str, Any], ...]
              ) -> Callable[[PyTree, PyTree, Any], jax.Array]:
  """`fn(params, state, x)` applying `module`; one shared function per equal (module, kwargs).

  Linen modules are frozen dataclasses, equal when their attributes are; a module or keyword
  argument that cannot be hashed gets a function of its own.
  """
  try:
    hash((module, kwargs))
  except TypeError:
    return _make_linen_fn(module, kwargs)
  return _cached_linen_fn(module, kwargs)


# ----------------------------------------------------------------------------------------------
# Flax NNX.


def _nnx_variable_types(module: Any) -> list[str]:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  _, everything = nnx.split(module)
  return sorted({type(v).__name__ for _, v in nnx.to_flat_state(everything)})


def from_nnx(module: Any, *, input_spec: InputSpec | Sequence[int], num_classes: int | None = None,
             differentiate: Any = None, name: str | None = None) -> Model:
  """Wraps a Flax NNX module as a `Model` in inference mode.

  The module is viewed in eval mode (`nnx.view(..., deterministic=True, use_running_average=True)`,
  the non-mutating form of `module.eval()`; the caller's module is left as it is), split with
  `nnx.split(module, differentiate, ...)`, and `apply` re-merges it: `nnx.merge(graphdef, params,
  state)(x)`.

  Args:
    module: an `nnx.Module` whose `__call__(x)` returns logits (N, O).
    input_spec: shape (H, W, C) of one example (or an `InputSpec`); the batch axis is added.
    num_classes: number of logits O; inferred from the output shape when None.
    differentiate: an NNX filter selecting the variables that form `params` (default `nnx.Param`;
      e.g. `nnx.Any(nnx.Param, nnx.BatchStat)`); the rest becomes `state`.
    name: model name (default: the module's class name).

  Returns:
    A `Model` whose `params` and `state` are pure nested dicts (`nnx.to_pure_dict`), and
    `apply(params, x)` of x (N, *input_spec.shape) giving logits (N, O).

  Raises:
    AdapterError: the filter selects nothing (the message lists the module's variable types), or
      applying to a dummy input fails.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  input_spec = _as_input_spec(input_spec)
  name = name or type(module).__name__
  if differentiate is None:
    differentiate = nnx.Param
  module = nnx.view(module, deterministic=True, use_running_average=True,
                    raise_if_not_found=False)
  graphdef, selected, *rest = nnx.split(module, differentiate, ...)
  (others,) = rest  # Two filters: one state each.
  if not jax.tree_util.tree_leaves(selected):
    raise AdapterError(
        f"NNX model {name!r}: differentiate={differentiate!r} selects no variables; the module's "
        f"variable types are {_nnx_variable_types(module)}.")
  params, state = nnx.to_pure_dict(selected), nnx.to_pure_dict(others)

  def fn(params, state, x):
    return nnx.merge(graphdef, params, state)(x)

  return _finish(fn, params, state, input_spec=input_spec, num_classes=num_classes, name=name,
                 framework="NNX", hint="the module's __call__ must take the batch x alone.")


# ----------------------------------------------------------------------------------------------
# Haiku.


def _takes_rng(apply_fn: Callable[..., Any], num_leading: int) -> bool:
  """Whether a Haiku apply has an `rng` argument (i.e. was not wrapped by without_apply_rng)."""
  try:
    names = list(inspect.signature(apply_fn).parameters)
  except (TypeError, ValueError):
    return True
  return len(names) > num_leading and names[num_leading] == "rng"


def from_haiku(transformed: Any, params: PyTree, state: PyTree | None = None, *,
               input_spec: InputSpec | Sequence[int], num_classes: int | None = None,
               differentiate: Callable[[str, str, Any], bool] | None = None,
               apply_kwargs: Mapping[str, Any] | None = None, name: str | None = None) -> Model:
  """Wraps an `hk.transform` / `hk.transform_with_state` pair and its variables as a `Model`.

  Inference mode: `rng=None` (with or without `hk.without_apply_rng`), the Haiku state (BatchNorm
  moving averages) is read, never updated; pass the network's switch, e.g.
  `apply_kwargs={"is_training": False}`.

  Args:
    transformed: `hk.Transformed` or `hk.TransformedWithState` (optionally `without_apply_rng`).
    params: Haiku params `{module_name: {param_name: array}}` from `init`.
    state: Haiku state from `transform_with_state(...).init` (None for `hk.transform`).
    input_spec: shape (H, W, C) of one example (or an `InputSpec`); the batch axis is added.
    num_classes: number of logits O; inferred from the output shape when None.
    differentiate: predicate `(module_name, param_name, value) -> bool` choosing the params that
      form `Model.params` (default: all); the others are frozen into `state["params"]`.
    apply_kwargs: keyword arguments for every `apply` call, e.g. `{"is_training": False}`.
    name: model name (default: the first module name in `params`).

  Returns:
    A `Model` with `params` the selected Haiku params, `state = {"params": frozen params,
    "state": Haiku state}`, and `apply(params, x)` of x (N, *input_spec.shape) giving logits (N, O).

  Raises:
    AdapterError: wrong `transformed`, state given to a stateless transform, a predicate selecting
      nothing, or applying to a dummy input fails.
  """
  import haiku as hk  # pylint: disable=g-import-not-at-top

  input_spec = _as_input_spec(input_spec)
  params = hk.data_structures.to_mutable_dict(params)
  if name is None:
    first = next(iter(params), "haiku_model")
    name = first.split("/")[0]
  if isinstance(transformed, hk.TransformedWithState):
    with_state, leading = True, 2
  elif isinstance(transformed, hk.Transformed):
    if state:
      raise AdapterError(f"Haiku model {name!r}: a state was given but `transformed` is an "
                         "hk.Transformed; use hk.transform_with_state for modules with state "
                         "(e.g. BatchNorm).")
    with_state, leading = False, 1
  else:
    raise AdapterError(f"Haiku model {name!r}: expected hk.transform(...) or "
                       f"hk.transform_with_state(...), got {type(transformed).__name__}.")
  takes_rng = _takes_rng(transformed.apply, leading)
  rng_args = (None,) if takes_rng else ()
  kwargs = dict(apply_kwargs or {})

  frozen: Mapping[str, Mapping[str, Any]]  # {module_name: {param_name: array}}
  if differentiate is None:
    diff, frozen = params, {}
  else:
    diff, frozen = hk.data_structures.partition(differentiate, params)
    diff = hk.data_structures.to_mutable_dict(diff)
    frozen = hk.data_structures.to_mutable_dict(frozen)
    if not jax.tree_util.tree_leaves(diff):
      raise AdapterError(f"Haiku model {name!r}: the differentiate predicate selects no parameter "
                         f"(modules: {sorted(params)[:10]}{' ...' if len(params) > 10 else ''}).")
  full_state = {"params": frozen,
                "state": hk.data_structures.to_mutable_dict(state or {})}

  def fn(params, state, x):
    all_params = hk.data_structures.merge(state["params"], params)
    if with_state:
      out, _ = transformed.apply(all_params, state["state"], *rng_args, x, **kwargs)
      return out
    return transformed.apply(all_params, *rng_args, x, **kwargs)

  return _finish(fn, diff, full_state, input_spec=input_spec, num_classes=num_classes, name=name,
                 framework="Haiku",
                 hint="pass the network's mode switch, e.g. apply_kwargs={'is_training': False}; "
                      "a module that draws random numbers in inference mode is not supported.")
