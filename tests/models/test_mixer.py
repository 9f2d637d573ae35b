"""Tests of ntk_zoo.models.mixer: variants, published sizes, timm/vit_jax/big_vision loading.

The timm parity reference is an independent MLP-Mixer forward written here with
torch.nn.functional directly on timm state-dict names (timm itself is deliberately not
installed). The checkpoint files use each format's real key names and shapes, random values.
The full NTK of mixer_tiny is checked in test_zoo_ntk.py.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

import ntk_zoo.models
from ntk_zoo.models import mixer
from ntk_zoo.models.convert import checkpoints
from ntk_zoo.models.convert.checkpoints import CheckpointMismatchError
from ntk_zoo.testing import max_normalized_error as rel_err

# A small Mixer for the file tests: width 32, 2 blocks, 16x16 patches on 32x32 images (4 tokens).
SMALL = mixer.MixerConfig(hidden_dim=32, tokens_mlp_dim=16, channels_mlp_dim=64, num_blocks=2,
                          patch_size=16)
IMAGE = 32
CLASSES = 10


def images(n: int = 2, size: int = IMAGE, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def logits(model, x) -> np.ndarray:
  """Jitted forward; models of equal configuration share `apply`, hence one compilation."""
  return np.asarray(jax.jit(model.apply)(model.params, x))


def flat_params(model) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in checkpoints.flatten(model.params["params"]).items()}


# ---------------------------------------------------------------------------------------------
# An independent timm MlpMixer: state-dict shapes (from timm's MlpMixer.__init__) and forward.


def timm_mixer_shapes(c: mixer.MixerConfig, image: int, num_classes: int) -> dict[str, tuple]:
  d, ds, dc, p = c.hidden_dim, c.tokens_mlp_dim, c.channels_mlp_dim, c.patch_size
  s = (image // p) ** 2
  shapes = {
      "stem.proj.weight": (d, 3, p, p), "stem.proj.bias": (d,),
      "norm.weight": (d,), "norm.bias": (d,),
      "head.weight": (num_classes, d), "head.bias": (num_classes,),
  }
  for i in range(c.num_blocks):
    b = f"blocks.{i}."
    shapes |= {
        b + "norm1.weight": (d,), b + "norm1.bias": (d,),
        b + "mlp_tokens.fc1.weight": (ds, s), b + "mlp_tokens.fc1.bias": (ds,),
        b + "mlp_tokens.fc2.weight": (s, ds), b + "mlp_tokens.fc2.bias": (s,),
        b + "norm2.weight": (d,), b + "norm2.bias": (d,),
        b + "mlp_channels.fc1.weight": (dc, d), b + "mlp_channels.fc1.bias": (dc,),
        b + "mlp_channels.fc2.weight": (d, dc), b + "mlp_channels.fc2.bias": (d,),
    }
  return shapes


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, np.ndarray]:
  """Random values of a sensible scale: weights ~ 1/sqrt(fan_in), norms ~ 1, biases ~ 0.1."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in shapes.items():
    if "norm" in k and k.endswith(".weight"):
      v = 1.0 + 0.1 * rng.standard_normal(s)
    elif k.endswith(".weight"):
      v = rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))
    else:
      v = 0.1 * rng.standard_normal(s)
    out[k] = v.astype(np.float32)
  return out


def torch_mixer_forward(sd: dict[str, np.ndarray], x_nhwc: np.ndarray) -> np.ndarray:
  """timm's MlpMixer.forward (exact GELU, LayerNorm eps 1e-6, average pool) in float64."""
  t = {k: torch.from_numpy(v).double() for k, v in sd.items()}
  x = torch.from_numpy(np.asarray(x_nhwc)).double().permute(0, 3, 1, 2)
  w = t["stem.proj.weight"]
  d, p = w.shape[0], w.shape[-1]
  x = F.conv2d(x, w, t["stem.proj.bias"], stride=p).flatten(2).transpose(1, 2)  # (B, S, D)

  def mlp(z, pre):
    z = F.gelu(F.linear(z, t[pre + "fc1.weight"], t[pre + "fc1.bias"]))
    return F.linear(z, t[pre + "fc2.weight"], t[pre + "fc2.bias"])

  i = 0
  while f"blocks.{i}.norm1.weight" in t:
    b = f"blocks.{i}."
    y = F.layer_norm(x, (d,), t[b + "norm1.weight"], t[b + "norm1.bias"], eps=1e-6)
    x = x + mlp(y.transpose(1, 2), b + "mlp_tokens.").transpose(1, 2)
    y = F.layer_norm(x, (d,), t[b + "norm2.weight"], t[b + "norm2.bias"], eps=1e-6)
    x = x + mlp(y, b + "mlp_channels.")
    i += 1
  x = F.layer_norm(x, (d,), t["norm.weight"], t["norm.bias"], eps=1e-6)
  return F.linear(x.mean(dim=1), t["head.weight"], t["head.bias"]).numpy()


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
  sd = random_state(timm_mixer_shapes(SMALL, IMAGE, CLASSES))
  path = tmp_path_factory.mktemp("timm") / "mixer_small.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  return path, sd


@pytest.fixture(scope="module")
def small_model():
  """The SMALL Mixer with JAX-trained-style (tanh GELU) settings, for the npz tests."""
  return mixer.create(SMALL, num_classes=CLASSES, image_size=IMAGE, seed=3, gelu_approximate=True)


# ---------------------------------------------------------------------------------------------
# Variants, sizes, registry.


def test_decode_variant():
  assert mixer.decode_variant("B/16") == mixer.MixerConfig(768, 384, 3072, 12, 16)
  assert mixer.decode_variant("S/32") == mixer.MixerConfig(512, 256, 2048, 8, 32)
  assert mixer.decode_variant("L/16") == mixer.MixerConfig(1024, 512, 4096, 24, 16)
  assert mixer.decode_variant("tiny") == mixer.TINY
  assert set(mixer.VARIANTS) == {f"{w}/{p}" for w in ("S", "B", "L") for p in (16, 32)}
  with pytest.raises(ValueError, match="Unknown Mixer variant 'Ti/16'"):
    mixer.decode_variant("Ti/16")


def count(shapes) -> int:
  return int(sum(np.prod(s.shape) for s in shapes.values()))


def formula_count(c: mixer.MixerConfig, image: int, num_classes: int) -> int:
  d, ds, dc, p = c.hidden_dim, c.tokens_mlp_dim, c.channels_mlp_dim, c.patch_size
  s = (image // p) ** 2
  per_block = 4 * d + (s * ds + ds + ds * s + s) + (d * dc + dc + dc * d + d)
  return (p * p * 3 * d + d) + c.num_blocks * per_block + 2 * d + d * num_classes + num_classes


def test_mixer_b16_parameter_count_is_published():
  # Tolstikhin et al. 2021 / timm mixer_b16_224: 59,880,472 parameters.
  assert count(mixer.param_shapes("B/16", num_classes=1000, image_size=224)) == 59_880_472


@pytest.mark.parametrize("variant", sorted(mixer.VARIANTS))
def test_parameter_counts_match_formula(variant):
  c = mixer.VARIANTS[variant]
  assert count(mixer.param_shapes(variant)) == formula_count(c, 224, 1000)


def test_registered_factories_and_tiny_model():
  names = set(ntk_zoo.models.list())
  for n in ("mixer_s16", "mixer_b16", "mixer_l16", "mixer_s32", "mixer_b32", "mixer_l32",
            "mixer_tiny"):
    assert n in names
  m = ntk_zoo.models.get("mixer_tiny", num_classes=3, seed=1)
  assert m.input_spec.shape == (16, 16, 3)
  assert m.input_spec.mean == (0.5, 0.5, 0.5) and m.input_spec.std == (0.5, 0.5, 0.5)
  assert m.num_classes == 3 and m.name == "mixer_tiny"
  assert m.num_params == formula_count(mixer.TINY, 16, 3)
  out = logits(m, m.input_spec.dummy(2))
  assert out.shape == (2, 3) and np.all(np.isfinite(out))


# ---------------------------------------------------------------------------------------------
# timm safetensors.


def test_load_timm_matches_torch_reference(timm_file):
  path, sd = timm_file
  x = images()
  ref = torch_mixer_forward(sd, x)
  m = mixer.load_timm(path, variant=SMALL, image_size=IMAGE)
  assert m.num_classes == CLASSES
  err = rel_err(logits(m, x), ref)
  assert err < 1e-4, err
  m_tanh = mixer.load_timm(path, variant=SMALL, image_size=IMAGE, gelu_approximate=True)
  assert rel_err(logits(m_tanh, x), ref) > 10 * err


def test_load_timm_mismatch_messages(tmp_path, timm_file):
  path, sd = timm_file
  # Another resolution changes the number of tokens, hence the token-mixing widths.
  with pytest.raises(CheckpointMismatchError,
                     match=r"MixerBlock_0/token_mixing/Dense_0/kernel: model \(9, 16\) vs file "
                           r"\(4, 16\)"):
    mixer.load_timm(path, variant=SMALL, image_size=48)
  extra = {k: v for k, v in sd.items() if k != "blocks.1.norm2.bias"}
  extra["blocks.1.mlp_tokens.fc3.weight"] = np.zeros((2, 2), np.float32)
  bad = tmp_path / "bad.safetensors"
  safetensors.numpy.save_file(extra, str(bad))
  with pytest.raises(CheckpointMismatchError) as e:
    mixer.load_timm(bad, variant=SMALL, image_size=IMAGE)
  msg = str(e.value)
  assert str(bad) in msg
  assert "missing keys" in msg and "MixerBlock_1/LayerNorm_1/bias" in msg
  assert "unexpected keys" in msg and "blocks.1.mlp_tokens.fc3.weight" in msg


@pytest.mark.slow
def test_load_timm_mixer_s16_224_matches_torch_reference(tmp_path):
  c = mixer.VARIANTS["S/16"]
  sd = random_state(timm_mixer_shapes(c, 224, 1000), seed=2)
  path = tmp_path / "mixer_s16_224.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  x = images(1, 224)
  m = mixer.load_timm(path, variant="S/16")
  assert m.num_params == 18_528_264
  err = rel_err(logits(m, x), torch_mixer_forward(sd, x))
  assert err < 1e-4, err


@pytest.mark.slow
def test_mixer_b16_factory_builds_published_model():
  m = mixer.mixer_b16()
  assert m.num_params == 59_880_472
  assert logits(m, m.input_spec.dummy(1)).shape == (1, 1000)


# ---------------------------------------------------------------------------------------------
# vit_jax / big_vision npz.


def vit_jax_mixer_keys(depth: int) -> set[str]:
  """The keys of a vit_jax Mixer .npz (e.g. imagenet1k/Mixer-B_16.npz), as written there."""
  keys = {"stem/kernel", "stem/bias", "pre_head_layer_norm/scale", "pre_head_layer_norm/bias",
          "head/kernel", "head/bias"}
  for i in range(depth):
    b = f"MixerBlock_{i}/"
    keys |= {b + f"LayerNorm_{j}/{leaf}" for j in (0, 1) for leaf in ("scale", "bias")}
    keys |= {b + f"{mlp}/Dense_{j}/{leaf}" for mlp in ("token_mixing", "channel_mixing")
             for j in (0, 1) for leaf in ("kernel", "bias")}
  return keys


def test_load_npz_vit_jax(tmp_path, small_model):
  m = small_model
  flat = flat_params(m)
  assert set(flat) == vit_jax_mixer_keys(SMALL.num_blocks)
  np.savez(tmp_path / "Mixer-small.npz", **flat)
  loaded = mixer.load_npz(tmp_path / "Mixer-small.npz", variant=SMALL, image_size=IMAGE)
  assert loaded.apply == m.apply  # Same configuration (tanh GELU, 10 classes).
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, m.params)


def test_load_npz_big_vision_prefixed_bfloat16(tmp_path, small_model):
  m = small_model
  flat = flat_params(m)
  to_void = lambda a: a.astype(ml_dtypes.bfloat16).view(np.dtype("V2"))
  file = {f"params/{k}": to_void(v) for k, v in flat.items()}
  file["opt/count"] = np.array(3)
  np.savez(tmp_path / "bv.npz", **file)
  loaded = mixer.load_npz(tmp_path / "bv.npz", variant=SMALL, image_size=IMAGE)
  rounded = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.bfloat16).astype(jnp.float32),
                                   m.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, rounded)
  x = images()
  assert rel_err(logits(loaded, x), logits(m, x)) < 2e-2  # bfloat16 rounding of the weights.


def test_load_npz_mismatch_message(tmp_path, small_model):
  flat = flat_params(small_model)
  flat.pop("pre_head_layer_norm/scale")
  np.savez(tmp_path / "bad.npz", **flat)
  with pytest.raises(CheckpointMismatchError,
                     match=r"bad\.npz does not match the model\.\n  missing keys .*\(1\):\n    "
                           r"pre_head_layer_norm/scale"):
    mixer.load_npz(tmp_path / "bad.npz", variant=SMALL, image_size=IMAGE)
  with pytest.raises(CheckpointMismatchError,
                     match=r"head/kernel: model \(32, 7\) vs file \(32, 10\)"):
    np.savez(tmp_path / "ok.npz", **flat_params(small_model))
    mixer.load_npz(tmp_path / "ok.npz", variant=SMALL, image_size=IMAGE, num_classes=7)
