"""Checkpoint loaders: files of other frameworks and formats into zoo `Model`s.

* `checkpoints`: reading `.safetensors` / `.npz` without torch or pickles, flat <-> nested trees,
  `check_matches` and the errors every loader raises.
* `torch_convert`: torch (torchvision / timm) state dicts -> Flax trees (layouts, plans, rules).
* `npz_convert`: vit_jax / big_vision `.npz` layouts (prefixes, scanned blocks, pre-Linen
  numbering, position-embedding resampling).
* `flax_checkpoints`: Flax msgpack / Orbax files of any zoo model (`save`, `load_into`).
* `resnet_checkpoints`, `vit_checkpoints`, `mixer_checkpoints`: each family's loaders,
  re-exported by its architecture module (`resnet.load_torchvision`, `vit.load_npz`, ...).
* `loading`: `ntk_zoo.models.load(name, path)`, the loader chosen by the file's format.

Nothing is imported here, so that the architecture modules and their loaders can import each
other's modules in either order.
"""
