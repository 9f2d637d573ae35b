"""Tests of ntk_zoo.models.vit: variants, published sizes, timm/vit_jax/big_vision loading.

The timm parity reference is an independent ViT forward written here with torch.nn.functional
directly on timm state-dict names (timm itself is deliberately not installed). The checkpoint
files are written with the real key names and shapes of each format, filled with random values.
The full NTK of vit_tiny is checked in test_zoo_ntk.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

import ntk_zoo.models
from ntk_zoo.models import vit
from ntk_zoo.models.convert import checkpoints, npz_convert
from ntk_zoo.models.convert.checkpoints import CheckpointMismatchError
from ntk_zoo.testing import max_normalized_error as rel_err

# A small ViT used for the file tests: width 32, 4 heads, 2 blocks, 8x8 patches on 32x32 images.
SMALL = vit.ViTConfig(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, patch_size=8)
IMAGE = 32
CLASSES = 10


# ---------------------------------------------------------------------------------------------
# An independent timm ViT: state-dict shapes (from timm's VisionTransformer.__init__) and forward.


def timm_vit_shapes(c: vit.ViTConfig, image: int, num_classes: int) -> dict[str, tuple]:
  d, m, p = c.hidden_size, c.mlp_dim, c.patch_size
  n = (image // p) ** 2
  shapes = {
      "cls_token": (1, 1, d),
      "pos_embed": (1, n + 1, d),
      "patch_embed.proj.weight": (d, 3, p, p),
      "patch_embed.proj.bias": (d,),
      "norm.weight": (d,), "norm.bias": (d,),
      "head.weight": (num_classes, d), "head.bias": (num_classes,),
  }
  for i in range(c.num_layers):
    b = f"blocks.{i}."
    shapes |= {
        b + "norm1.weight": (d,), b + "norm1.bias": (d,),
        b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
        b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
        b + "norm2.weight": (d,), b + "norm2.bias": (d,),
        b + "mlp.fc1.weight": (m, d), b + "mlp.fc1.bias": (m,),
        b + "mlp.fc2.weight": (d, m), b + "mlp.fc2.bias": (d,),
    }
  return shapes


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
  """Random values of a sensible scale: weights ~ 1/sqrt(fan_in), norms ~ 1, biases ~ 0.1."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in shapes.items():
    if (k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight"):
      v = 1.0 + 0.1 * rng.standard_normal(s)
    elif k.endswith(".weight"):
      v = rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))
    elif k.endswith(".bias"):
      v = 0.1 * rng.standard_normal(s)
    else:  # cls_token, pos_embed
      v = 0.5 * rng.standard_normal(s)
    out[k] = v.astype(np.float32)
  return out


def torch_vit_forward(sd: dict[str, np.ndarray], x_nhwc: np.ndarray, num_heads: int) -> np.ndarray:
  """timm's VisionTransformer.forward (class token, exact GELU, eps 1e-6) in float64."""
  t = {k: torch.from_numpy(v).double() for k, v in sd.items()}
  x = torch.from_numpy(np.asarray(x_nhwc)).double().permute(0, 3, 1, 2)
  w = t["patch_embed.proj.weight"]
  d, p = w.shape[0], w.shape[-1]
  x = F.conv2d(x, w, t["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
  b = x.shape[0]
  x = torch.cat([t["cls_token"].expand(b, -1, -1), x], dim=1) + t["pos_embed"]
  n, hd = x.shape[1], d // num_heads
  i = 0
  while f"blocks.{i}.norm1.weight" in t:
    pre = f"blocks.{i}."
    y = F.layer_norm(x, (d,), t[pre + "norm1.weight"], t[pre + "norm1.bias"], eps=1e-6)
    qkv = F.linear(y, t[pre + "attn.qkv.weight"], t[pre + "attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(y, t[pre + "attn.proj.weight"], t[pre + "attn.proj.bias"])
    y = F.layer_norm(x, (d,), t[pre + "norm2.weight"], t[pre + "norm2.bias"], eps=1e-6)
    y = F.gelu(F.linear(y, t[pre + "mlp.fc1.weight"], t[pre + "mlp.fc1.bias"]))
    x = x + F.linear(y, t[pre + "mlp.fc2.weight"], t[pre + "mlp.fc2.bias"])
    i += 1
  x = F.layer_norm(x, (d,), t["norm.weight"], t["norm.bias"], eps=1e-6)
  return F.linear(x[:, 0], t["head.weight"], t["head.bias"]).numpy()


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
  sd = random_state(timm_vit_shapes(SMALL, IMAGE, CLASSES))
  path = tmp_path_factory.mktemp("timm") / "vit_small.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  return path, sd


def images(n: int = 2, size: int = IMAGE, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def logits(model, x) -> np.ndarray:
  """Jitted forward; models of equal configuration share `apply`, hence one compilation."""
  return np.asarray(jax.jit(model.apply)(model.params, x))


@pytest.fixture(scope="module")
def small_model():
  """The SMALL ViT with JAX-trained-style (tanh GELU) settings, for the npz tests."""
  return vit.create(SMALL, num_classes=CLASSES, image_size=IMAGE, seed=3, gelu_approximate=True)


def flat_params(model) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in checkpoints.flatten(model.params["params"]).items()}


# ---------------------------------------------------------------------------------------------
# Variants, sizes, registry.


def test_decode_variant():
  assert vit.decode_variant("B/16") == vit.ViTConfig(768, 3072, 12, 12, 16)
  assert vit.decode_variant("Ti/16") == vit.ViTConfig(192, 768, 3, 12, 16)
  assert vit.decode_variant("S/32") == vit.ViTConfig(384, 1536, 6, 12, 32)
  assert vit.decode_variant("L/16") == vit.ViTConfig(1024, 4096, 16, 24, 16)
  assert vit.decode_variant("H/14").patch_size == 14
  assert vit.decode_variant("tiny") == vit.TINY
  assert set(vit.VARIANTS) == {f"{w}/{p}" for w in ("Ti", "S", "B", "L") for p in (16, 32)}
  with pytest.raises(ValueError, match="Unknown ViT variant 'X/16'"):
    vit.decode_variant("X/16")
  with pytest.raises(ValueError, match="Unknown ViT variant 'B'"):
    vit.decode_variant("B")


def count(shapes) -> int:
  return int(sum(np.prod(s.shape) for s in shapes.values()))


def formula_count(c: vit.ViTConfig, image: int, num_classes: int) -> int:
  d, m, p = c.hidden_size, c.mlp_dim, c.patch_size
  n = (image // p) ** 2
  per_block = (2 * 2 * d) + (4 * d * d + 4 * d) + (d * m + m + m * d + d)
  return (p * p * 3 * d + d) + d + (n + 1) * d + c.num_layers * per_block + 2 * d + (
      d * num_classes + num_classes)


def test_vit_b16_parameter_count_is_published():
  # Dosovitskiy et al. 2021 / timm vit_base_patch16_224: 86,567,656 parameters.
  assert count(vit.param_shapes("B/16", num_classes=1000, image_size=224)) == 86_567_656


@pytest.mark.parametrize("variant", sorted(vit.VARIANTS))
def test_parameter_counts_match_formula(variant):
  c = vit.VARIANTS[variant]
  assert count(vit.param_shapes(variant)) == formula_count(c, 224, 1000)


def test_registered_factories_and_tiny_model():
  names = set(ntk_zoo.models.list())
  for n in ("vit_ti16", "vit_s16", "vit_b16", "vit_l16", "vit_ti32", "vit_s32", "vit_b32",
            "vit_l32", "vit_tiny"):
    assert n in names
  m = ntk_zoo.models.get("vit_tiny", num_classes=3, seed=1)
  assert m.input_spec.shape == (16, 16, 3)
  assert m.input_spec.mean == (0.5, 0.5, 0.5) and m.input_spec.std == (0.5, 0.5, 0.5)
  assert m.num_classes == 3 and m.name == "vit_tiny"
  assert m.num_params == formula_count(vit.TINY, 16, 3)
  out = jax.jit(m.apply)(m.params, m.input_spec.dummy(2))
  assert out.shape == (2, 3) and np.all(np.isfinite(out))
  shapes16 = vit.param_shapes("tiny", num_classes=3, image_size=16, dtype=jnp.bfloat16)
  assert {s.dtype for s in shapes16.values()} == {jnp.dtype(jnp.bfloat16)}
  module16 = vit.VisionTransformer(vit.TINY, num_classes=3, dtype=jnp.bfloat16)
  out16 = jax.eval_shape(lambda p, x: module16.apply({"params": p}, x),
                         checkpoints.unflatten(shapes16), jnp.zeros((1, 16, 16, 3), jnp.bfloat16))
  assert out16.shape == (1, 3) and out16.dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# timm safetensors.


def test_load_timm_matches_torch_reference(timm_file):
  path, sd = timm_file
  x = images()
  ref = torch_vit_forward(sd, x, SMALL.num_heads)
  m = vit.load_timm(path, variant=SMALL, image_size=IMAGE)
  assert m.num_classes == CLASSES
  err = rel_err(logits(m, x), ref)
  assert err < 1e-4, err
  # The tanh approximation is a different function: visibly worse against timm's exact GELU.
  m_tanh = vit.load_timm(path, variant=SMALL, image_size=IMAGE, gelu_approximate=True)
  assert rel_err(logits(m_tanh, x), ref) > 10 * err


def test_load_timm_resamples_pos_embed(timm_file):
  path, sd = timm_file
  m = vit.load_timm(path, variant=SMALL, image_size=48)  # grid 4x4 -> 6x6
  pe = m.params["params"]["Transformer"]["posembed_input"]["pos_embedding"]
  assert pe.shape == (1, 1 + 36, SMALL.hidden_size)
  np.testing.assert_array_equal(pe[:, :1], sd["pos_embed"][:, :1])  # Class token row kept.
  assert jax.eval_shape(m.apply, m.params, images(1, 48)).shape == (1, CLASSES)


def test_load_timm_mismatch_messages(tmp_path, timm_file):
  path, sd = timm_file
  with pytest.raises(CheckpointMismatchError,
                     match=r"shape conflicts \(37\):\n    Transformer/encoder_norm/bias: model "
                           r"\(48,\) vs file \(32,\)") as e:
    vit.load_timm(path, variant=vit.ViTConfig(48, 64, 4, 2, 8), image_size=IMAGE)
  assert str(path) in str(e.value)
  with pytest.raises(CheckpointMismatchError,
                     match=r"head/kernel: model \(32, 5\) vs file \(32, 10\)"):
    vit.load_timm(path, variant=SMALL, num_classes=5, image_size=IMAGE)

  extra = dict(sd)
  for k, v in sd.items():
    if k.startswith("blocks.1."):
      extra[k.replace("blocks.1.", "blocks.2.")] = v
  extra["blocks.0.ls1.gamma"] = np.ones(SMALL.hidden_size, np.float32)
  del extra["norm.weight"]
  bad = tmp_path / "bad.safetensors"
  safetensors.numpy.save_file(extra, str(bad))
  with pytest.raises(CheckpointMismatchError) as e:
    vit.load_timm(bad, variant=SMALL, image_size=IMAGE)
  msg = str(e.value)
  assert "missing keys (the model needs them, the file lacks them) (1):" in msg
  assert "Transformer/encoder_norm/scale" in msg
  assert "unexpected keys" in msg
  assert "Transformer/encoderblock_2/LayerNorm_0/scale (from blocks.2.norm1)" in msg
  assert "blocks.0.ls1.gamma" in msg


@pytest.mark.slow
def test_load_timm_vit_s16_224_matches_torch_reference(tmp_path):
  c = vit.VARIANTS["S/16"]
  sd = random_state(timm_vit_shapes(c, 224, 1000), seed=2)
  path = tmp_path / "vit_small_patch16_224.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  x = images(1, 224)
  m = vit.load_timm(path, variant="S/16")
  assert m.num_params == 22_050_664
  err = rel_err(logits(m, x), torch_vit_forward(sd, x, c.num_heads))
  assert err < 1e-4, err


@pytest.mark.slow
def test_vit_b16_factory_builds_published_model():
  m = vit.vit_b16()
  assert m.num_params == 86_567_656
  assert logits(m, m.input_spec.dummy(1)).shape == (1, 1000)


# ---------------------------------------------------------------------------------------------
# vit_jax and big_vision npz.


def vit_jax_keys(depth: int) -> set[str]:
  """The keys of a vit_jax (pre-Linen) ViT .npz, e.g. ViT-B_16.npz, as written there."""
  keys = {"cls", "embedding/kernel", "embedding/bias", "head/kernel", "head/bias",
          "Transformer/posembed_input/pos_embedding", "Transformer/encoder_norm/scale",
          "Transformer/encoder_norm/bias"}
  for i in range(depth):
    b = f"Transformer/encoderblock_{i}/"
    keys |= {b + f"LayerNorm_{j}/{leaf}" for j in (0, 2) for leaf in ("scale", "bias")}
    keys |= {b + f"MultiHeadDotProductAttention_1/{n}/{leaf}"
             for n in ("query", "key", "value", "out") for leaf in ("kernel", "bias")}
    keys |= {b + f"MlpBlock_3/Dense_{j}/{leaf}" for j in (0, 1) for leaf in ("kernel", "bias")}
  return keys


# Pre-Linen (vit_jax) -> Linen (big_vision) block-module names.
TO_LINEN = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
            "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}


def to_big_vision(flat: dict[str, np.ndarray], depth: int) -> dict[str, np.ndarray]:
  """Our (vit_jax) flat params -> big_vision layout: Linen names, scanned blocks, posemb at top."""
  out, blocks = {}, {}
  for k, v in flat.items():
    parts = k.split("/")
    if k == vit.POSEMB_KEY:
      if "cls" in flat:  # big_vision has no class-token row (it must be zero here).
        assert not np.any(v[:, :1])
        v = v[:, 1:]
      out["pos_embedding"] = v
    elif len(parts) > 2 and parts[1].startswith("encoderblock_"):
      i = int(parts[1].split("_")[1])
      rest = "/".join(TO_LINEN.get(q, q) for q in parts[2:])
      blocks.setdefault(rest, [None] * depth)[i] = v
    else:
      out[k] = v
  for rest, vs in blocks.items():
    out[f"Transformer/encoderblock/{rest}"] = np.stack(vs)
  return out


def as_bf16_void(a: np.ndarray) -> np.ndarray:
  return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).view(np.dtype("V2"))


def test_load_npz_vit_jax_pre_linen(tmp_path, small_model):
  m = small_model
  flat = flat_params(m)
  assert set(flat) == vit_jax_keys(SMALL.num_layers)  # The file uses the real vit_jax names.
  path = tmp_path / "ViT-small.npz"
  np.savez(path, **flat)
  loaded = vit.load_npz(path, variant=SMALL, image_size=IMAGE)
  assert loaded.apply == m.apply  # Same configuration (tanh GELU, class token, 10 classes).
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, m.params)
  # A training checkpoint: parameters under opt/target/, plus optimizer state to ignore.
  train = {f"opt/target/{k}": v for k, v in flat.items()}
  train["opt/state/step"] = np.array(7)
  np.savez(tmp_path / "train.npz", **train)
  loaded = vit.load_npz(tmp_path / "train.npz", variant=SMALL, image_size=IMAGE)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, m.params)


def test_load_npz_big_vision_scanned_bfloat16(tmp_path, small_model):
  m = small_model
  flat = flat_params(m)
  # big_vision adds no position embedding to the class token: fold row 0 into `cls`, then round
  # everything to bfloat16 (what the file stores).
  flat["cls"] = flat["cls"] + flat[vit.POSEMB_KEY][:, :1]
  flat[vit.POSEMB_KEY] = flat[vit.POSEMB_KEY].copy()
  flat[vit.POSEMB_KEY][:, :1] = 0.0
  flat = {k: as_bf16_void(v).view(ml_dtypes.bfloat16).astype(np.float32) for k, v in flat.items()}
  ref_params = {"params": checkpoints.unflatten({k: jnp.asarray(v) for k, v in flat.items()})}

  bv = to_big_vision(flat, SMALL.num_layers)
  assert bv["pos_embedding"].shape == (1, 16, SMALL.hidden_size)
  assert bv["Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"].shape == (
      SMALL.num_layers, 32, 4, 8)
  file = {f"params/{k}": as_bf16_void(v) for k, v in bv.items()}
  file["opt/mu/head/kernel"] = as_bf16_void(bv["head/kernel"])
  path = tmp_path / "bv.npz"
  np.savez(path, **file)
  with np.load(path) as z:
    assert z["params/cls"].dtype == np.dtype("V2")
  loaded = vit.load_npz(path, variant=SMALL, image_size=IMAGE)
  assert loaded.apply == m.apply
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, ref_params)
  # Same function as the original model (whose weights were rounded to bfloat16 in the file).
  rounded = jax.tree_util.tree_map(
      lambda v: jnp.asarray(v, jnp.bfloat16).astype(jnp.float32), m.params)
  x = images()
  assert rel_err(logits(loaded, x), logits(dataclasses.replace(m, params=rounded), x)) < 1e-2


def test_load_npz_big_vision_gap_model(tmp_path):
  m = vit.create(SMALL, num_classes=CLASSES, image_size=IMAGE, seed=5, classifier="gap",
                 gelu_approximate=True)
  flat = flat_params(m)
  assert "cls" not in flat
  bv = to_big_vision(flat, SMALL.num_layers)
  # Unscanned big_vision: Linen names, numbered blocks.
  unscanned = {}
  for k, v in bv.items():
    if k.startswith("Transformer/encoderblock/"):
      for i in range(SMALL.num_layers):
        unscanned[k.replace("encoderblock/", f"encoderblock_{i}/")] = v[i]
    else:
      unscanned[k] = v
  np.savez(tmp_path / "gap.npz", **unscanned)
  loaded = vit.load_npz(tmp_path / "gap.npz", variant=SMALL, image_size=IMAGE)
  assert loaded.apply == m.apply  # classifier="gap" inferred from the missing class token.
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, m.params)


def test_load_npz_infers_pre_logits(tmp_path):
  # vit_jax ImageNet-21k checkpoints have a `pre_logits` Dense (+ tanh) before the head.
  m = vit.create(SMALL, num_classes=CLASSES, image_size=IMAGE, representation_size=24,
                 gelu_approximate=True)
  flat = flat_params(m)
  assert flat["pre_logits/kernel"].shape == (32, 24) and flat["head/kernel"].shape == (24, 10)
  np.savez(tmp_path / "i21k.npz", **flat)
  loaded = vit.load_npz(tmp_path / "i21k.npz", variant=SMALL, image_size=IMAGE)
  assert loaded.apply == m.apply
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, m.params)


def test_load_npz_resamples_pos_embedding(tmp_path, small_model):
  flat = flat_params(small_model)
  np.savez(tmp_path / "v.npz", **flat)
  loaded = vit.load_npz(tmp_path / "v.npz", variant=SMALL, image_size=56)  # grid 4 -> 7
  pe = loaded.params["params"]["Transformer"]["posembed_input"]["pos_embedding"]
  expected = npz_convert.resample_posemb(flat[vit.POSEMB_KEY], (7, 7), num_prefix_tokens=1)
  np.testing.assert_allclose(pe, expected, rtol=1e-6)
  assert jax.eval_shape(loaded.apply, loaded.params, images(1, 56)).shape == (1, CLASSES)


def test_load_npz_mismatch_message(tmp_path, small_model):
  flat = flat_params(small_model)
  del flat["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
  flat["Transformer/encoderblock_1/MlpBlock_3/Dense_7/bias"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "bad.npz", **flat)
  with pytest.raises(CheckpointMismatchError) as e:
    vit.load_npz(tmp_path / "bad.npz", variant=SMALL, image_size=IMAGE)
  msg = str(e.value)
  assert "bad.npz does not match the model" in msg
  assert "missing keys" in msg and "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias" in msg
  assert "unexpected keys" in msg and "Transformer/encoderblock_1/MlpBlock_3/Dense_7/bias" in msg


# ---------------------------------------------------------------------------------------------
# Position-embedding resampling.


def test_resample_posemb_identity_and_shapes():
  pe = np.random.default_rng(0).standard_normal((1, 1 + 16, 8)).astype(np.float32)
  assert npz_convert.resample_posemb(pe, (4, 4), num_prefix_tokens=1) is pe
  for method in ("vit_jax", "bilinear", "bicubic"):
    out = npz_convert.resample_posemb(pe, (6, 6), num_prefix_tokens=1, method=method)
    assert out.shape == (1, 1 + 36, 8) and out.dtype == pe.dtype
    np.testing.assert_array_equal(out[:, :1], pe[:, :1])
  # Corner-aligned linear interpolation keeps the corners exactly.
  out = npz_convert.resample_posemb(pe, (7, 7), num_prefix_tokens=1).reshape(-1, 8)[1:]
  grid = pe[0, 1:].reshape(4, 4, 8)
  np.testing.assert_allclose(out.reshape(7, 7, 8)[::6, ::6], grid[::3, ::3], rtol=1e-6)
  with pytest.raises(ValueError, match="not a 4x4 grid"):
    npz_convert.resample_posemb(pe[:, :-1], (6, 6), num_prefix_tokens=1, old_grid=(4, 4))


def test_resample_posemb_matches_scipy_zoom():
  ndimage = pytest.importorskip("scipy.ndimage")
  pe = np.random.default_rng(1).standard_normal((1, 1 + 49, 5))
  for new in (3, 7, 12):
    out = npz_convert.resample_posemb(pe, (new, new), num_prefix_tokens=1)
    grid = ndimage.zoom(pe[0, 1:].reshape(7, 7, 5), (new / 7, new / 7, 1), order=1)
    np.testing.assert_allclose(out[0, 1:], grid.reshape(-1, 5), rtol=1e-10, atol=1e-12)


def test_to_linen_names_renumbers_pre_linen_only():
  keys = ["T/b_0/LayerNorm_0/scale", "T/b_0/Attn_1/query/kernel", "T/b_0/LayerNorm_2/bias",
          "T/b_0/MlpBlock_3/Dense_0/kernel", "T/b_1/LayerNorm_0/scale", "T/b_1/LayerNorm_1/scale",
          "M/MixerBlock_1/x"]
  got = npz_convert.to_linen_names(keys)
  assert got["T/b_0/Attn_1/query/kernel"] == "T/b_0/Attn_0/query/kernel"
  assert got["T/b_0/LayerNorm_2/bias"] == "T/b_0/LayerNorm_1/bias"
  assert got["T/b_0/MlpBlock_3/Dense_0/kernel"] == "T/b_0/MlpBlock_0/Dense_0/kernel"
  assert got["T/b_1/LayerNorm_1/scale"] == "T/b_1/LayerNorm_1/scale"  # Already Linen.
  assert got["M/MixerBlock_1/x"] == "M/MixerBlock_1/x"  # A gap: reported, not shifted.
