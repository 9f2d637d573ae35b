"""Real photographs as model inputs: the photos bundled in scikit-image, or image files.

Nothing is downloaded: `sample_photos` reads the photographs that ship inside the scikit-image
wheel (and scikit-learn's two sample images beyond those). Every image is center-cropped to a
square, resized with anti-aliasing, and returned as float32 RGB in [0, 1], ready for a zoo
model's `input_spec.preprocess`.

    >>> images, names = sample_photos(4, 64)       # (4, 64, 64, 3), ["astronaut", ...]
    >>> x = model.input_spec.preprocess(images)
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["EXTENSIONS", "SAMPLE_PHOTOS", "fit", "image_files", "load_images", "sample_photos"]

# File extensions `image_files` picks up in a directory.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _skimage(name: str) -> Callable[[], np.ndarray]:
  def load():
    import skimage.data  # pylint: disable=g-import-not-at-top
    return getattr(skimage.data, name)()
  return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
  def load():
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
    return load_sample_images().images[index]
  return load


# Photographs (not drawings or synthetic patterns) bundled in installed wheels, in the order
# `sample_photos` uses them.
SAMPLE_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "camera": _skimage("camera"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "coins": _skimage("coins"),
    "moon": _skimage("moon"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "china": _sklearn(0),
    "flower": _sklearn(1),
}


def fit(image: np.ndarray, size: int | tuple[int, int], channels: int = 3) -> np.ndarray:
  """Center-crops `image` to the aspect ratio of `size` and resizes it (anti-aliased).

  Args:
    image: (H, W) grayscale or (H, W, C) image with C in {1, 3, 4} (alpha is dropped), any
      dtype scikit-image understands (uint8, uint16, bool, float in [0, 1]).
    size: output side, or (height, width).
    channels: 3 (RGB; grayscale is replicated) or 1 (luminance).

  Returns:
    (height, width, channels) float32 array in [0, 1].
  """
  from skimage import color, transform, util  # pylint: disable=g-import-not-at-top
  h_out, w_out = (size, size) if isinstance(size, int) else size
  img = util.img_as_float(np.asarray(image))
  if img.ndim == 3 and img.shape[-1] == 4:
    img = img[..., :3]
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim != 2 and not (img.ndim == 3 and img.shape[-1] == 3):
    raise ValueError(f"Expected an (H, W) or (H, W, 1|3|4) image, got shape {np.shape(image)}.")
  if channels == 1 and img.ndim == 3:
    img = color.rgb2gray(img)
  elif channels == 3 and img.ndim == 2:
    img = np.stack([img] * 3, axis=-1)
  h, w = img.shape[:2]
  scale = min(h / h_out, w / w_out)
  ch, cw = max(1, round(h_out * scale)), max(1, round(w_out * scale))
  top, left = (h - ch) // 2, (w - cw) // 2
  img = img[top:top + ch, left:left + cw]
  out = transform.resize(img, (h_out, w_out), anti_aliasing=ch > h_out or cw > w_out)
  return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(h_out, w_out, channels)


def sample_photos(n: int, size: int | tuple[int, int], channels: int = 3,
                  progress: bool = False) -> tuple[np.ndarray, list[str]]:
  """The first `n` photographs of `SAMPLE_PHOTOS`, fitted to `size`.

  Args:
    n: number of photos, 1 <= n <= len(SAMPLE_PHOTOS).
    size: output side, or (height, width).
    channels: 3 (RGB) or 1.
    progress: show a tqdm bar.

  Returns:
    (n, height, width, channels) float32 array in [0, 1], and the photos' names.
  """
  if not 1 <= n <= len(SAMPLE_PHOTOS):
    raise ValueError(f"{n} sample photos requested; there are {len(SAMPLE_PHOTOS)} bundled "
                     "photos. Pass image files for more.")
  names = list(SAMPLE_PHOTOS)[:n]
  return np.stack([fit(SAMPLE_PHOTOS[k](), size, channels)
                   for k in _bar(names, "photos", progress)]), names


def image_files(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """Files named in `paths`, with directories expanded to their image files (sorted).

  Raises:
    FileNotFoundError: a path does not exist, or a directory holds no image file.
  """
  files = []
  for p in map(pathlib.Path, paths):
    if p.is_dir():
      found = sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
      if not found:
        raise FileNotFoundError(f"{p} holds no image file ({', '.join(EXTENSIONS)}).")
      files.extend(found)
    elif p.exists():
      files.append(p)
    else:
      raise FileNotFoundError(f"{p}: no such file or directory.")
  return files


def load_images(files: Sequence[str | os.PathLike], size: int | tuple[int, int],
                channels: int = 3, progress: bool = False) -> np.ndarray:
  """Reads image files (PNG, JPEG, ... via scikit-image) and fits them to `size`.

  Returns:
    (len(files), height, width, channels) float32 array in [0, 1].

  Raises:
    ValueError: a file cannot be read as an image (the message names it).
  """
  from skimage import io  # pylint: disable=g-import-not-at-top
  out = []
  for f in _bar(files, "images", progress):
    try:
      with warnings.catch_warnings():  # imageio's plugins warn while it tries each on a bad file
        warnings.simplefilter("ignore", DeprecationWarning)
        image = io.imread(os.fspath(f))
      out.append(fit(image, size, channels))
    except Exception as e:  # pylint: disable=broad-except  (decoders raise many kinds)
      raise ValueError(f"cannot read {os.fspath(f)} as an image: {_first_line(e)}") from e
  return np.stack(out)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _bar(items, desc: str, progress: bool):
  if not progress:
    return items
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(items, desc=desc, unit="img", leave=False, disable=None)
