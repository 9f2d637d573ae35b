"""Tests of ntk_zoo.models.resnet: published sizes, torchvision parity, checkpoint files.

The parity reference is an independent ResNet forward written here with torch.nn.functional
directly on torchvision state-dict names (torchvision itself is deliberately not installed).
The full NTK of resnet_tiny is checked in test_zoo_ntk.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F

import ntk_zoo.models
from ntk_zoo.models import common, resnet
from ntk_zoo.models.adapters import BoundApply
from ntk_zoo.models.convert import flax_checkpoints
from ntk_zoo.models.convert.checkpoints import CheckpointMismatchError
from ntk_zoo.testing import max_normalized_error as rel_err

# ---------------------------------------------------------------------------------------------
# An independent torchvision-architecture ResNet: state-dict shapes and a functional forward.

# name: (block, layers, stem width, width_per_group) as in torchvision.models.resnet.
TORCHVISION_ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64, 64),
    "resnet_tiny": ("basic", (1, 1), 8, 64),
}


def torchvision_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
  """{name: shape} of torchvision's ResNet state dict, written from torchvision's __init__."""
  block, layers, base, width_per_group = TORCHVISION_ARCHS[arch]
  expansion = 1 if block == "basic" else 4
  shapes: dict[str, tuple[int, ...]] = {}

  def bn(prefix, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.{leaf}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()

  shapes["conv1.weight"] = (base, 3, 7, 7)
  bn("bn1", base)
  inplanes = base
  for i, n in enumerate(layers):
    planes = base * 2**i
    for j in range(n):
      p = f"layer{i + 1}.{j}"
      stride = 2 if i > 0 and j == 0 else 1
      if block == "basic":
        shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
        bn(f"{p}.bn1", planes)
        shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
        bn(f"{p}.bn2", planes)
      else:
        width = planes * width_per_group // 64
        shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
        bn(f"{p}.bn1", width)
        shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
        bn(f"{p}.bn2", width)
        shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
        bn(f"{p}.bn3", planes * 4)
      if stride != 1 or inplanes != planes * expansion:
        shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  shapes["fc.weight"] = (num_classes, inplanes)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def random_state_dict(arch: str, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random torchvision-named weights with O(1) activations (He-scaled convs, BN near identity)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in torchvision_shapes(arch, num_classes).items():
    leaf = name.rsplit(".", 1)[1]
    if leaf == "num_batches_tracked":
      out[name] = np.array(123, np.int64)
    elif leaf == "weight" and len(shape) == 4:
      fan_in = np.prod(shape[1:])
      out[name] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    elif leaf == "weight" and len(shape) == 2:
      out[name] = rng.normal(0, np.sqrt(1 / shape[1]), shape).astype(np.float32)
    elif leaf == "weight":  # BatchNorm scale
      out[name] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    elif leaf == "bias":
      out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif leaf == "running_mean":
      out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif leaf == "running_var":
      out[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      raise AssertionError(name)
  return out


def torch_resnet_forward(sd: dict[str, np.ndarray], arch: str, x_nchw: np.ndarray) -> np.ndarray:
  """torchvision ResNet inference forward with torch.nn.functional (NCHW in, logits out)."""
  block, layers, _, _ = TORCHVISION_ARCHS[arch]
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

  def bn(x, p):
    return F.batch_norm(x, t[f"{p}.running_mean"], t[f"{p}.running_var"], t[f"{p}.weight"],
                        t[f"{p}.bias"], training=False, eps=1e-5)

  with torch.no_grad():
    x = torch.from_numpy(x_nchw)
    x = F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for i, n in enumerate(layers):
      for j in range(n):
        p = f"layer{i + 1}.{j}"
        s = 2 if i > 0 and j == 0 else 1
        if block == "basic":
          y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn1"))
          y = bn(F.conv2d(y, t[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        else:
          y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"]), f"{p}.bn1"))
          y = F.relu(bn(F.conv2d(y, t[f"{p}.conv2.weight"], stride=s, padding=1), f"{p}.bn2"))
          y = bn(F.conv2d(y, t[f"{p}.conv3.weight"]), f"{p}.bn3")
        if f"{p}.downsample.0.weight" in t:
          x = bn(F.conv2d(x, t[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
        x = F.relu(y + x)
    x = x.mean(dim=(2, 3))
    return F.linear(x, t["fc.weight"], t["fc.bias"]).numpy()


# ---------------------------------------------------------------------------------------------
# Sizes.


def count(arch: str, num_classes: int = 1000) -> int:
  variables = common.abstract_variables(resnet.make_module(arch, num_classes=num_classes),
                                        image_size=64)
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("arch,expected", [
    ("resnet50", 25_557_032),       # torchvision and Haiku agree.
    ("resnet152", 60_192_808),
    ("wide_resnet50_2", 68_883_240),
    ("resnet18", 11_689_512),
])
def test_published_parameter_counts(arch, expected):
  assert count(arch) == expected


def test_parameter_count_matches_torchvision_state_dict_without_buffers():
  expected = sum(int(np.prod(s)) for k, s in torchvision_shapes("resnet50", 1000).items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
  assert count("resnet50") == expected


# ---------------------------------------------------------------------------------------------
# Factories and the registry.


@pytest.fixture(scope="module")
def built_tiny():
  """resnet_tiny from the registry (random torchvision-style init)."""
  return ntk_zoo.models.get("resnet_tiny")


def test_tiny_factory_shapes_and_collections(built_tiny):
  model = built_tiny
  x = model.input_spec.dummy(3)
  assert x.shape == (3, 32, 32, 3)
  assert model.apply(model.params, x).shape == (3, 10)
  assert set(model.params) == {"params"} and set(model.state) == {"batch_stats"}
  assert "scale" in model.params["params"]["bn1"]
  assert "mean" in model.state["batch_stats"]["bn1"]
  assert isinstance(model.apply, BoundApply)
  assert model.num_params == count("resnet_tiny", num_classes=10)
  assert model.input_spec.mean == resnet.IMAGENET_MEAN


def test_registered_names():
  names = set(ntk_zoo.models.list_models())
  assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
          "resnet_tiny"} <= names


@pytest.fixture(scope="module")
def tiny():
  """resnet_tiny with random torchvision-style weights (loaded: no PRNG init to compile)."""
  return resnet.load_torchvision(random_state_dict("resnet_tiny", 10), arch="resnet_tiny")


def test_differentiate_all_includes_batch_stats_and_agrees(tiny):
  x = tiny.input_spec.dummy(2, seed=1)
  variables = {**tiny.params, **tiny.state}
  module = resnet.make_module("resnet_tiny")
  b = resnet.linen_model(module, variables, differentiate="all", input_spec=tiny.input_spec,
                         num_classes=10, name="resnet_tiny")
  assert set(b.params) == {"params", "batch_stats"} and b.state == {}
  np.testing.assert_allclose(tiny.apply(tiny.params, x), b.apply(b.params, x), rtol=1e-6)
  with pytest.raises(ValueError, match="differentiate"):
    resnet.linen_model(module, variables, differentiate="batch_stats",
                       input_spec=tiny.input_spec, num_classes=10, name="resnet_tiny")


def test_unknown_variant_message():
  with pytest.raises(ValueError, match="resnet51.*resnet50"):
    resnet.make_module("resnet51")


def test_apply_is_jittable_and_inference_mode(tiny):
  x = tiny.input_spec.dummy(2)
  y = jax.jit(tiny.apply)(tiny.params, x)
  np.testing.assert_allclose(y, tiny.apply(tiny.params, x), rtol=1e-5, atol=1e-6)
  # Inference mode: each example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(jax.jit(tiny.apply)(tiny.params, x.at[1].set(0.0))[0], y[0],
                             rtol=1e-5, atol=1e-6)


def test_train_mode_uses_batch_statistics(tiny):
  module = resnet.make_module("resnet_tiny")
  x = tiny.input_spec.dummy(4)
  y, updates = module.apply({**tiny.params, **tiny.state}, x, train=True,
                            mutable=["batch_stats"])
  assert y.shape == (4, 10)
  assert not np.allclose(updates["batch_stats"]["bn1"]["mean"],
                         tiny.state["batch_stats"]["bn1"]["mean"])


# ---------------------------------------------------------------------------------------------
# torchvision checkpoints.


@pytest.mark.parametrize("arch,image_size,num_classes", [
    ("resnet_tiny", 32, 10),
    ("resnet18", 64, 1000),
    ("resnet50", 64, 1000),
])
def test_load_torchvision_matches_torch_forward(tmp_path, arch, image_size, num_classes):
  sd = random_state_dict(arch, num_classes)
  path = tmp_path / f"{arch}.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  model = resnet.load_torchvision(path, arch=arch, image_size=image_size)
  assert model.num_classes == num_classes
  x = np.random.default_rng(1).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
  ours = np.asarray(model.apply(model.params, jnp.asarray(x)))
  ref = torch_resnet_forward(sd, arch, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  assert ours.shape == ref.shape == (2, num_classes)
  assert np.all(np.isfinite(ref)) and np.std(ref) > 1e-3
  assert rel_err(ours, ref) < 1e-4, rel_err(ours, ref)


def test_load_torchvision_from_in_memory_dict_and_num_classes_override():
  sd = random_state_dict("resnet_tiny", 7)
  model = resnet.load_torchvision(sd, arch="resnet_tiny")
  assert model.num_classes == 7
  np.testing.assert_array_equal(model.params["params"]["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.state["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                sd["layer2.0.downsample.1.running_var"])
  with pytest.raises(CheckpointMismatchError,
                     match=r"fc.weight: model \(5, 16\) vs file \(7, 16\)"):
    resnet.load_torchvision(sd, arch="resnet_tiny", num_classes=5)


def test_file_written_by_safetensors_torch(tmp_path):
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  sd = random_state_dict("resnet_tiny", 10)
  path = tmp_path / "from_torch.safetensors"
  safetensors.torch.save_file({k: torch.from_numpy(v) for k, v in sd.items()}, str(path))
  model = resnet.load_torchvision(path, arch="resnet_tiny")
  np.testing.assert_array_equal(model.params["params"]["layer1_0"]["conv2"]["kernel"],
                                sd["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.params["params"]["fc"]["kernel"], sd["fc.weight"].T)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
  sd = random_state_dict("resnet_tiny", 10)
  sd["layer1.0.conv1.wieght"] = sd.pop("layer1.0.conv1.weight")   # renamed
  del sd["layer2.0.bn2.bias"]                                        # missing
  sd["layer2.0.downsample.1.running_var"] = np.ones((3,), np.float32)  # wrong shape
  path = tmp_path / "broken.safetensors"
  safetensors.numpy.save_file(sd, str(path))
  with pytest.raises(CheckpointMismatchError) as info:
    resnet.load_torchvision(path, arch="resnet_tiny")
  msg = str(info.value)
  assert str(path) in msg
  assert "missing keys" in msg and "layer1.0.conv1.weight" in msg and "layer2.0.bn2.bias" in msg
  assert "unexpected keys" in msg and "layer1.0.conv1.wieght" in msg
  assert "layer2.0.downsample.1.running_var: model (16,) vs file (3,)" in msg
  assert "num_batches_tracked" not in msg


# ---------------------------------------------------------------------------------------------
# Flax msgpack files (flax_checkpoints.load_into), BatchNorm statistics included.


def test_load_into_flax_variables_file_with_batch_stats(tmp_path, built_tiny):
  """`flax.serialization.to_bytes(variables)` ({"params", "batch_stats"}) of a trained ResNet."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  sd = random_state_dict("resnet_tiny", 10, seed=3)
  source = resnet.load_torchvision(sd, arch="resnet_tiny")
  path = tmp_path / "variables.msgpack"
  path.write_bytes(serialization.to_bytes({**source.params, **source.state}))
  loaded = flax_checkpoints.load_into(built_tiny, path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, source.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.state, source.state)
  assert loaded.apply.state is loaded.state  # the file's statistics are what `apply` uses
  x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(loaded.apply)(loaded.params, jnp.asarray(x)))
  ref = torch_resnet_forward(sd, "resnet_tiny", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  assert rel_err(ours, ref) < 1e-4, rel_err(ours, ref)
  # The factory model itself is untouched.
  assert not np.allclose(built_tiny.apply(built_tiny.params, jnp.asarray(x)), ours)


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
def test_save_and_load_into_round_trip(tmp_path, tiny, built_tiny, fmt):
  path = flax_checkpoints.save(tmp_path / "ckpt", tiny, format=fmt)
  loaded = flax_checkpoints.load_into(built_tiny, path)
  x = tiny.input_spec.dummy(2, seed=5)
  np.testing.assert_allclose(loaded.apply(loaded.params, x), tiny.apply(tiny.params, x),
                             rtol=1e-5, atol=1e-6)
  assert loaded.apply == built_tiny.apply.rebind(loaded.state)  # one shared apply function


def test_wrong_architecture_is_a_mismatch():
  with pytest.raises(CheckpointMismatchError, match="layer1.0.conv3.weight"):
    resnet.load_torchvision(random_state_dict("resnet18", 1000), arch="resnet50")


def test_pickled_checkpoints_are_refused(tmp_path):
  path = tmp_path / "resnet50.pth"
  path.write_bytes(b"not even read")
  with pytest.raises(ValueError, match="never unpickles"):
    resnet.load_torchvision(path)


def test_torch_module_names():
  assert resnet.torch_module_name("layer3_12/downsample_bn") == "layer3.12.downsample.1"
  assert resnet.torch_module_name("layer1_0/downsample_conv") == "layer1.0.downsample.0"
  assert resnet.torch_module_name("fc") == "fc"


def test_torch_convert_layouts_and_errors():
  from ntk_zoo.models.convert import torch_convert  # pylint: disable=g-import-not-at-top
  w = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)  # (O, I, kH, kW)
  k = torch_convert.conv_kernel_from_torch(w)
  assert k.shape == (5, 7, 3, 2) and k[4, 6, 2, 1] == w[1, 2, 4, 6]
  assert torch_convert.conv_shape_to_torch(k.shape) == w.shape
  leaf = torch_convert.plan_leaf("batch_stats/layer1_0/bn1/var", (8,), resnet.torch_module_name)
  assert leaf.torch_name == "layer1.0.bn1.running_var"
  with pytest.raises(ValueError, match="params/stem/embedding"):
    torch_convert.plan_leaf("params/stem/embedding", (3, 4), resnet.torch_module_name)
