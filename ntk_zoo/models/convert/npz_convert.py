"""Helpers shared by the loaders of Google-format `.npz` checkpoints (vit_jax, big_vision).

These files are flat `{"a/b/c": array}` dicts whose keys are Flax module paths. Three layouts
exist in the wild, and the functions here bring all of them to one canonical form:

* vit_jax (google-research/vision_transformer) files use *pre-Linen* module numbering: one
  counter per parent module shared by all submodule classes (`LayerNorm_0`,
  `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`). Training checkpoints may prefix
  every key with `opt/target/`.
* big_vision files use *Linen* numbering (one counter per class: `LayerNorm_0`,
  `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`), may prefix every key with
  `params/`, may stack the blocks of a `nn.scan`-ned encoder along a leading depth axis under an
  un-numbered name (`Transformer/encoderblock/...` of shape (depth, ...)), and store bfloat16 as a
  2-byte void dtype (decoded by `checkpoints.read_npz`).

`to_linen_names` implements the renaming of `flax.training.checkpoints.convert_pre_linen` on flat
keys (without importing the training/orbax stack); since it is idempotent on Linen names, two keys
refer to the same parameter iff their Linen forms agree. `match_names` uses this to map a file's
keys onto a model's keys whichever numbering either side uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_zoo.models.convert import checkpoints

# `Name_12` -> ("Name", 12), as `flax.training.checkpoints.MODULE_NUM_RE`.
_MODULE_NUM_RE = re.compile(r"^(.*)_(\d+)$")

# Key prefixes under which training checkpoints store the parameters.
KNOWN_PREFIXES = ("params/", "opt/target/")


def strip_prefix(flat: Mapping[str, np.ndarray], anchor: str,
                 prefixes: Sequence[str] = KNOWN_PREFIXES) -> dict[str, np.ndarray]:
  """Keeps only the parameters of a training checkpoint and drops their key prefix.

  Args:
    flat: `{key: array}` as read from the file.
    anchor: a key every parameter dict of the architecture has, e.g. "embedding/kernel".
    prefixes: candidate prefixes, tried in order.

  Returns:
    `flat` itself when `anchor` is a key; otherwise, for the first prefix `p` with `p + anchor`
    in `flat`, the entries under `p` with `p` removed (optimizer state etc. are dropped).
    Unchanged if no prefix matches (the mismatch is then reported by `check_matches`).
  """
  if anchor in flat:
    return dict(flat)
  for p in prefixes:
    if p + anchor in flat:
      return {k[len(p):]: v for k, v in flat.items() if k.startswith(p)}
  return dict(flat)


def unstack_scanned(flat: Mapping[str, np.ndarray], parent: str,
                    block: str) -> dict[str, np.ndarray]:
  """Splits blocks stacked by `nn.scan` into numbered blocks.

  Args:
    flat: `{key: array}`.
    parent: the path holding the blocks, e.g. "Transformer" ("" for the top level).
    block: the scanned module's name, e.g. "encoderblock".

  Returns:
    A copy in which every `{parent}/{block}/rest` of shape (depth, *s) is replaced by the depth
    keys `{parent}/{block}_{i}/rest` of shape s.
  """
  scanned = f"{parent}/{block}/" if parent else f"{block}/"
  out = {}
  for k, v in flat.items():
    if not k.startswith(scanned):
      out[k] = v
      continue
    rest = k[len(scanned):]
    head = scanned[:-1]
    for i in range(np.shape(v)[0]):
      out[f"{head}_{i}/{rest}"] = v[i]
  return out


def _renumber_children(names: set[str]) -> dict[str, str]:
  """Linen names for the children of one module (see `to_linen_names`)."""
  numbered = {}
  for name in names:
    m = _MODULE_NUM_RE.match(name)
    if m:
      numbered[name] = (m.group(1), int(m.group(2)))
  table = {name: name for name in names}
  per_class: dict[str, list[int]] = {}
  for cls, num in numbered.values():
    per_class.setdefault(cls, []).append(num)
  if all(sorted(nums) == list(range(len(nums))) for nums in per_class.values()):
    return table  # Already Linen numbering.
  if sorted(num for _, num in numbered.values()) != list(range(len(numbered))):
    return table  # Neither numbering: leave it for `check_matches` to report.
  counts: dict[str, int] = {}
  for name in sorted(numbered, key=lambda n: numbered[n][1]):
    cls = numbered[name][0]
    table[name] = f"{cls}_{counts.get(cls, 0)}"
    counts[cls] = counts.get(cls, 0) + 1
  return table


def to_linen_names(keys: Iterable[str]) -> dict[str, str]:
  """Maps flat pre-Linen (or Linen) keys to Linen keys, as `convert_pre_linen` does on trees.

  Within each parent path whose numbered children share one counter (pre-Linen: their numbers
  are exactly 0..n-1 across classes), the children are renumbered per class in order:
  `{LayerNorm_0, Attn_1, LayerNorm_2, Mlp_3}` becomes `{LayerNorm_0, Attn_0, LayerNorm_1,
  Mlp_0}`. Children already numbered per class from 0 (Linen) are left unchanged, and so are
  children that fit neither scheme (e.g. a file missing `MixerBlock_0`), so that a damaged file
  is reported rather than silently shifted.

  Args:
    keys: "/"-separated keys.

  Returns:
    `{key: linen_key}` for every key.
  """
  keys = list(keys)
  children: dict[tuple[str, ...], set[str]] = {}
  for k in keys:
    parts = tuple(k.split("/"))
    for depth in range(len(parts)):
      children.setdefault(parts[:depth], set()).add(parts[depth])
  renames = {parent: _renumber_children(names) for parent, names in children.items()}
  out = {}
  for k in keys:
    parts = tuple(k.split("/"))
    out[k] = "/".join(renames[parts[:d]][parts[d]] for d in range(len(parts)))
  return out


def match_names(loaded: Mapping[str, np.ndarray],
                expected_keys: Iterable[str]) -> dict[str, np.ndarray]:
  """Renames `loaded` keys to the model's keys when they name the same parameter.

  Both sides are brought to Linen numbering (`to_linen_names`); a file key whose Linen form is
  the Linen form of a model key gets that model key. Other keys are kept as they are (and are
  reported as unexpected by `check_matches`).

  Args:
    loaded: flat `{key: array}` from a file (pre-Linen or Linen numbering).
    expected_keys: the model's flat keys (either numbering).

  Returns:
    `{key: array}` with the model's spelling wherever a key could be matched.
  """
  expected_keys = list(expected_keys)
  linen_to_model = {lk: k for k, lk in to_linen_names(expected_keys).items()}
  file_to_linen = to_linen_names(loaded)
  return {linen_to_model.get(file_to_linen[k], k): v for k, v in loaded.items()}


def read_google_npz(path: str | os.PathLike, *, anchor: str,
                    scanned: Sequence[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
  """Reads a vit_jax / big_vision `.npz` into flat float arrays with numbered blocks.

  Args:
    path: the `.npz` file (never unpickled; bfloat16-as-void decoded to float32).
    anchor: a key every checkpoint of the architecture has (see `strip_prefix`).
    scanned: `(parent, block)` pairs of possibly scanned blocks (see `unstack_scanned`).

  Returns:
    flat `{key: np.ndarray}` with the prefix stripped and scanned blocks split.
  """
  flat = strip_prefix(checkpoints.read_npz(path), anchor)
  for parent, block in scanned:
    flat = unstack_scanned(flat, parent, block)
  return flat


def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) matrix of corner-aligned linear interpolation (`scipy.ndimage.zoom`, order 1)."""
  m = np.zeros((n_out, n_in), np.float64)
  if n_out == 1 or n_in == 1:
    m[:, 0] = 1.0
    return m
  pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
  frac = pos - lo
  m[np.arange(n_out), lo] = 1.0 - frac
  m[np.arange(n_out), lo + 1] += frac
  return m


def resample_posemb(posemb: np.ndarray, new_grid: tuple[int, int], *, num_prefix_tokens: int,
                    old_grid: tuple[int, int] | None = None,
                    method: str = "vit_jax") -> np.ndarray:
  """Resamples a learned position embedding to a new grid of patches ("hi-res fine-tuning").

  The `num_prefix_tokens` leading rows (the class token's) are kept; the remaining rows, a
  row-major (gh, gw) grid of patch embeddings, are interpolated in 2D.

  Args:
    posemb: (1, num_prefix_tokens + gh * gw, D) array.
    new_grid: (gh', gw') the target grid of patches.
    num_prefix_tokens: 1 with a class token, 0 without.
    old_grid: (gh, gw); default: the square grid, as vit_jax and big_vision assume.
    method: "vit_jax": corner-aligned linear interpolation, what vit_jax's `load_pretrained` and
      big_vision's `resample_posemb` do with `scipy.ndimage.zoom(grid, zoom, order=1)`;
      "bilinear" / "bicubic" / "lanczos3": `jax.image.resize` (half-pixel centres, antialiased
      when shrinking; timm's `resample_abs_pos_embed` is the same idea with torch's kernels).

  Returns:
    (1, num_prefix_tokens + gh' * gw', D) array; `posemb` itself when the grid is unchanged.

  Raises:
    ValueError: if the rows do not form the grid, or `method` is unknown.
  """
  posemb = np.asarray(posemb)
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  n, d = grid.shape
  if old_grid is None:
    side = int(round(np.sqrt(n)))
    old_grid = (side, side)
  if old_grid[0] * old_grid[1] != n:
    raise ValueError(
        f"pos_embedding has {n} patch rows (after {num_prefix_tokens} prefix token(s)), which is "
        f"not a {old_grid[0]}x{old_grid[1]} grid. Pass old_grid=(gh, gw) for non-square grids.")
  new_grid = (int(new_grid[0]), int(new_grid[1]))
  if tuple(old_grid) == new_grid:
    return posemb
  grid = grid.reshape(*old_grid, d)
  if method == "vit_jax":
    mh = _linear_resize_matrix(old_grid[0], new_grid[0])
    mw = _linear_resize_matrix(old_grid[1], new_grid[1])
    out = np.einsum("Hh,Ww,hwd->HWd", mh, mw, grid.astype(np.float64))
  elif method in ("bilinear", "bicubic", "lanczos3", "lanczos5"):
    out = np.asarray(jax.image.resize(jnp.asarray(grid, jnp.float32), (*new_grid, d), method))
  else:
    raise ValueError(f"Unknown posemb resampling method {method!r}; use 'vit_jax', 'bilinear', "
                     "'bicubic' or 'lanczos3'.")
  out = out.reshape(1, new_grid[0] * new_grid[1], d).astype(posemb.dtype)
  return np.concatenate([prefix, out], axis=1)
