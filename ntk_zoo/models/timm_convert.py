"""Renaming timm (PyTorch) state dicts to Flax parameter trees, without importing torch.

A conversion is a list of `Rule`s: a regular expression over torch names (`blocks.(\\d+).norm1`)
and a function returning `{flax_key: array}` for the matched module's tensors. `convert` applies
the rules to a flat `{torch_name: np.ndarray}` (from `checkpoints.read_safetensors`); tensors no
rule claims keep their torch name, so `checkpoints.check_matches` reports them as unexpected.

Layout changes (the weights themselves are never modified):
* `nn.Linear.weight` (out, in) -> Flax `Dense.kernel` (in, out).
* `nn.Conv2d.weight` (O, I, kh, kw) -> Flax `Conv.kernel` (kh, kw, I, O).
* `nn.LayerNorm.weight` -> Flax `LayerNorm.scale`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  """Converts one torch module's tensors.

  Attributes:
    pattern: regular expression matched (fully) against the torch module path, i.e. the tensor
      name without its last component (`blocks.3.attn.qkv` for `blocks.3.attn.qkv.weight`).
    convert: `convert(tensors, match) -> {flax_key: array}`, where `tensors` maps the last name
      component ("weight", "bias", ...) to the array and `match` is the regex match.
  """
  pattern: str
  convert: Callable[[Mapping[str, np.ndarray], re.Match], Arrays]


def linear_t(w: np.ndarray) -> np.ndarray:
  """torch `Linear.weight` (out, in) -> Flax `Dense.kernel` (in, out)."""
  return np.ascontiguousarray(np.swapaxes(w, -1, -2)) if np.ndim(w) >= 2 else w


def conv_oihw_to_hwio(w: np.ndarray) -> np.ndarray:
  """torch `Conv2d.weight` (O, I, kh, kw) -> Flax `Conv.kernel` (kh, kw, I, O)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))) if np.ndim(w) == 4 else w


def _renamed(tensors: Mapping[str, np.ndarray], prefix: str,
             names: Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]) -> Arrays:
  out = {}
  for torch_name, w in tensors.items():
    if torch_name in names:
      flax_name, fn = names[torch_name]
      out[f"{prefix}/{flax_name}"] = fn(w)
    else:  # An unknown tensor of a known module: keep it visible as unexpected.
      out[f"{prefix}/{torch_name}"] = w
  return out


def _ident(w):
  return w


def dense(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.Linear` -> Flax `Dense` at `prefix` (may use `{1}`-style groups)."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("kernel", linear_t), "bias": ("bias", _ident)})


def conv(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.Conv2d` -> Flax `Conv` at `prefix`."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("kernel", conv_oihw_to_hwio), "bias": ("bias", _ident)})


def layer_norm(prefix: str) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body: `nn.LayerNorm` -> Flax `LayerNorm` at `prefix`."""
  return lambda t, m: _renamed(t, prefix.format(*m.groups()),
                               {"weight": ("scale", _ident), "bias": ("bias", _ident)})


def tensor(flax_key: str, fn: Callable[[np.ndarray], np.ndarray] = _ident
           ) -> Callable[[Mapping[str, np.ndarray], re.Match], Arrays]:
  """Rule body for a bare `nn.Parameter` (pattern = its full name): one array to `flax_key`."""
  def body(t, m):
    (w,) = t.values()
    return {flax_key.format(*m.groups()): fn(w)}
  return body


def convert(state: Mapping[str, np.ndarray],
            rules: Sequence[Rule]) -> tuple[Arrays, dict[str, str]]:
  """Applies `rules` to a flat torch state dict.

  Bare parameters (`cls_token`) are matched by their full name; module tensors
  (`blocks.0.norm1.weight`) by their module path (`blocks.0.norm1`). The first matching rule wins.

  Args:
    state: `{torch_name: array}`.
    rules: the architecture's rules.

  Returns:
    `(flat, origin)`: `flat` maps Flax keys (or torch names no rule claims) to arrays; `origin`
    maps each key of `flat` to the torch module path or name it came from (for error messages).
  """
  compiled = [(re.compile(r.pattern), r.convert) for r in rules]
  # Group tensors by module path; bare parameters form their own group.
  groups: dict[str, dict[str, np.ndarray]] = {}
  for name, w in state.items():
    if any(rx.fullmatch(name) for rx, _ in compiled):
      groups.setdefault(name, {})[name] = w
    else:
      module, _, leaf = name.rpartition(".")
      groups.setdefault(module, {})[leaf] = w
  flat: Arrays = {}
  origin: dict[str, str] = {}
  for module, tensors in groups.items():
    for rx, body in compiled:
      m = rx.fullmatch(module)
      if m:
        for k, w in body(tensors, m).items():
          flat[k], origin[k] = w, module
        break
    else:  # No rule: keep the torch names.
      for leaf, w in tensors.items():
        k = f"{module}.{leaf}" if module else leaf
        flat[k], origin[k] = w, k
  return flat, origin


def annotate_unexpected(flat: Mapping[str, np.ndarray], origin: Mapping[str, str],
                        expected_keys: Iterable[str]) -> Arrays:
  """Appends `(from <torch name>)` to keys the model does not have, for readable errors.

  `expected_keys`: the model's parameter names (a collection, or a mapping keyed by them).
  """
  expected = set(expected_keys)
  return {k if (k in expected or origin.get(k, k) == k) else f"{k} (from {origin[k]})": v
          for k, v in flat.items()}
