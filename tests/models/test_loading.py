"""ntk_zoo.models.load: one dispatch from (zoo name, checkpoint file) to a loader."""

import numpy as np
import pytest

import ntk_zoo
from ntk_zoo.models.convert import flax_checkpoints, loading


def test_random_init_and_family():
  model = ntk_zoo.models.load("resnet_tiny", num_classes=3, image_size=8)
  assert model.num_classes == 3 and model.input_spec.shape == (8, 8, 3)
  assert loading.family("vit_b16") == ("vit", "B/16")
  assert loading.family("mixer_tiny") == ("mixer", "tiny/4")
  assert loading.family("resnet50") == ("resnet", None)
  assert loading.family("wrn28_10") == ("other", None)


def test_refusals(tmp_path):
  (tmp_path / "w.pth").write_bytes(b"\x80\x04")
  with pytest.raises(loading.CheckpointFormatError, match="never unpickles"):
    ntk_zoo.models.load("resnet18", tmp_path / "w.pth")
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(loading.CheckpointFormatError, match="no .npz loader for resnet18"):
    ntk_zoo.models.load("resnet18", tmp_path / "w.npz")
  with pytest.raises(FileNotFoundError, match="no such file"):
    ntk_zoo.models.load("resnet18", tmp_path / "missing.safetensors")


def test_flax_msgpack_round_trip(tmp_path):
  model = ntk_zoo.models.get("wrn_tiny", num_classes=3, seed=1)
  flax_checkpoints.save(tmp_path / "m.msgpack", model)
  loaded = ntk_zoo.models.load("wrn_tiny", tmp_path / "m.msgpack", num_classes=3)
  x = model.input_spec.dummy(2)
  np.testing.assert_allclose(loaded.apply(loaded.params, x), model.apply(model.params, x),
                             rtol=1e-6)
