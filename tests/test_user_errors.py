"""First contact: each usual mistake gets a message naming the fix, or the expected behaviour.

One test per row of issue 11 (the `python -m ntk_zoo` arguments are tested with the CLI).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_zoo
from ntk_zoo.models import InputError


@pytest.fixture(scope="module")
def tiny():
  return ntk_zoo.models.get("resnet_tiny", num_classes=3, image_size=8)


def test_nchw_images_name_nhwc_and_the_transpose(tiny):
  kernel = ntk_zoo.ntk_fn(tiny.apply, trace_axes=())
  with pytest.raises(InputError, match=r"expects inputs \(N, 8, 8, 3\) float32 \(NHWC: channels "
                                       r"last\).*NCHW.*jnp\.transpose\(x, \(0, 2, 3, 1\)\)"):
    kernel(jnp.ones((2, 3, 8, 8)), None, tiny.params)


def test_inner_params_name_the_whole_variables_dict(tiny):
  with pytest.raises(InputError, match=r"pass the whole variables dict `model\.params`, not "
                                       r"`model\.params\['params'\]`"):
    tiny.apply(tiny.params["params"], tiny.input_spec.dummy(2))


def test_patch_models_reject_image_sizes_their_patches_do_not_fit():
  with pytest.raises(ValueError, match=r"ViT with 4x4 patches needs image sides that are positive "
                                       r"multiples of 4 \(minimum 4.*got 3x3.*image_size=4"):
    ntk_zoo.models.get("vit_tiny", image_size=3)


def test_uint8_images_name_preprocess(tiny):
  images = np.zeros((2, 8, 8, 3), np.uint8)
  with pytest.raises(InputError, match=r"dtype uint8.*model\.input_spec\.preprocess\(images\)"):
    ntk_zoo.ntk_fn(tiny.apply)(images, None, tiny.params)
  assert tiny.apply(tiny.params, tiny.input_spec.preprocess(images)).shape == (2, 3)


def test_model_repr_is_short(tiny):
  text = repr(tiny)
  assert text == ("Model(name='resnet_tiny', params=6,107, state=144 values, "
                  "input=(N, 8, 8, 3) float32 (NHWC: channels last), num_classes=3)")


def test_truncated_safetensors_is_named_as_such(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models import resnet  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models.convert.checkpoints import CheckpointFileError  # pylint: disable=g-import-not-at-top
  whole = tmp_path / "whole.safetensors"
  save_file({"fc.weight": np.ones((10, 64), np.float32)}, str(whole))
  cut = tmp_path / "resnet18.safetensors"
  cut.write_bytes(whole.read_bytes()[:-100])
  message = (r"file '.*resnet18\.safetensors' \([\d,]+ bytes\) is not a complete safetensors "
             r"file \(truncated download\?\)(.|\n)*download it again")
  with pytest.raises(CheckpointFileError, match=message):
    resnet.load_torchvision(cut, arch="resnet18")


def _dense(params, x):
  return x @ params["w"]


DENSE_PARAMS = {"w": jnp.ones((3, 4))}


def test_vmap_axis_that_is_not_the_batch_axis_names_shapes_and_choices():
  kernel = ntk_zoo.ntk_fn(_dense, trace_axes=(), vmap_axes=1)
  with pytest.raises(ValueError, match=r"vmap_axes output axis 1 of f's output<root> of shape "
                                       r"\(5, 4\) has size 4, but the inputs' batch axis has size "
                                       r"3 .*Valid choices for these shapes: vmap_axes=0"):
    kernel(jnp.ones((5, 3)), None, DENSE_PARAMS)


def test_non_finite_inputs_warn_once_with_an_opt_out():
  x = jnp.ones((5, 3)).at[0, 0].set(jnp.nan)
  kernel = ntk_zoo.ntk_fn(_dense, trace_axes=(), vmap_axes=0)
  with pytest.warns(ntk_zoo.NonFiniteInputWarning, match=r"x1<root> contains NaN or inf.*"
                                                         r"check_finite=False") as record:
    kernel(x, None, DENSE_PARAMS)
    kernel(x, None, DENSE_PARAMS)  # once per kernel
  assert sum(r.category is ntk_zoo.NonFiniteInputWarning for r in record) == 1
  quiet = ntk_zoo.ntk_fn(_dense, trace_axes=(), vmap_axes=0, check_finite=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error", ntk_zoo.NonFiniteInputWarning)
    quiet(x, None, DENSE_PARAMS)
    traced = ntk_zoo.ntk_fn(_dense, trace_axes=(), vmap_axes=0)
    jax.jit(traced)(x, None, DENSE_PARAMS)  # tracers: not checked
    jax.jit(lambda p: traced(x, None, p))(DENSE_PARAMS)  # concrete x inside a trace: not checked


def test_zoo_models_are_float64_under_x64(x64):
  model = ntk_zoo.models.get("resnet_tiny", num_classes=2, image_size=8)
  assert {l.dtype for l in jax.tree_util.tree_leaves(model.params)} == {jnp.dtype(jnp.float64)}
  assert model.input_spec.dummy(1).dtype == jnp.float64
  kernel = jax.eval_shape(ntk_zoo.ntk_fn(model.apply, trace_axes=()), model.input_spec.dummy(1),
                          None, model.params)
  assert kernel.dtype == jnp.float64
  kept = ntk_zoo.models.get("resnet_tiny", num_classes=2, image_size=8, dtype=jnp.float32)
  assert {l.dtype for l in jax.tree_util.tree_leaves(kept.params)} == {jnp.dtype(jnp.float32)}


@jax.custom_vjp
def _doubled_grad_dense(w, x):
  return x @ w


# The derivative this custom_vjp defines (twice the true one for w) is what jax.jacobian uses.
_doubled_grad_dense.defvjp(lambda w, x: (x @ w, (w, x)),
                           lambda res, g: (2 * res[1].T @ g, g @ res[0].T))


@jax.custom_vjp
def _clipped_grad_dense(w, x):
  return x @ w


_clipped_grad_dense.defvjp(lambda w, x: (x @ w, (w, x)),
                           lambda res, g: (res[1].T @ jnp.clip(g, -0.1, 0.1), g @ res[0].T))


def test_custom_vjp_parameters_take_the_structured_path(monkeypatch):
  from ntk_zoo.ntk.structured import UnstructuredPrimitiveWarning  # pylint: disable=g-import-not-at-top
  from ntk_zoo.ntk.structured import program  # pylint: disable=g-import-not-at-top
  from ntk_zoo.testing import assert_ntk_close, reference_ntk  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(program, "_WARNED", set())
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w1": jax.random.normal(keys[0], (3, 5)), "w2": jax.random.normal(keys[1], (5, 2))}
  x = jax.random.normal(keys[2], (4, 3))
  for dense in (_doubled_grad_dense, _clipped_grad_dense):
    def f(p, x, dense=dense):
      return jnp.tanh(dense(p["w1"], x)) @ p["w2"]
    expected = reference_ntk(f, x, None, params, trace_axes=())
    kernel = ntk_zoo.ntk_fn(f, implementation="structured_derivatives", trace_axes=(),
                            vmap_axes=0)
    with warnings.catch_warnings(record=True) as record:
      warnings.simplefilter("always")
      assert_ntk_close(kernel(x, None, params), expected)  # float32: max-normalized error 1e-4
    messages = [str(r.message) for r in record if r.category is UnstructuredPrimitiveWarning]
    if dense is _doubled_grad_dense:  # bwd is linear: transposed into ordinary, structured ops
      assert not messages
      for impl in ("ntk_vector_products", "auto"):
        got = ntk_zoo.ntk_fn(f, implementation=impl, trace_axes=(), vmap_axes=0)(x, None, params)
        assert_ntk_close(got, expected)
    else:  # a clipping bwd cannot be transposed: materialized through bwd, and said so
      assert len(messages) == 1 and "jax.custom_vjp function" in messages[0]
      assert "register a rule" not in messages[0].lower()


def test_readmes_name_only_files_inside_the_repository():
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  for readme in (root / "README.md", root / "benchmarks" / "README.md"):
    text = readme.read_text()
    assert "../" not in text, f"{readme} points outside the repository"
    # Paths named in the text (placeholders such as experiments/FIGURE.py are upper case).
    for path in re.findall(r"\b((?:benchmarks|experiments|ntk_zoo|tests)/[a-z_][\w/.-]*"
                           r"\.(?:py|sh|md))", text):
      assert (root / path).exists() or (readme.parent / path).exists(), f"{readme}: {path}"


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], r"--n: must be a positive integer, got 0"),
    (["--model", "vit_tiny", "--image-size", "3"], r"too small for vit_tiny"),
])
def test_command_line_bad_sizes_are_one_line(argv, message, capsys, tmp_path):
  """`python -m ntk_zoo --n 0` / ViT `--image-size 3` (more CLI errors: tests/test_cli.py)."""
  import re  # pylint: disable=g-import-not-at-top
  from ntk_zoo import cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    cli.main([*argv, "--out", str(tmp_path / "out")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
  assert not (tmp_path / "out").exists()
