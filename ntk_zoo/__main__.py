"""`python -m ntk_zoo`: the full NTK of a zoo model on built-in inputs (no downloads).

    python -m ntk_zoo                                  # resnet_tiny, 4 inputs, 10 logits
    python -m ntk_zoo --model wrn_ntk_tiny --n 8 --implementation structured_derivatives
    python -m ntk_zoo --model resnet18 --image-size 32 --num-classes 10 --n 2

Prints the kernel's shape, the method `auto` picked and why, compile and run time, and the
spectrum summary (condition number) of the full N·O × N·O NTK.
"""

from __future__ import annotations

import argparse
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

import ntk_zoo


def builtin_images(n: int, shape: tuple[int, ...]) -> np.ndarray:
  """Deterministic synthetic images in [0, 1] (smooth gradients and stripes), (n, *shape)."""
  h, w, c = shape
  yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
  imgs = []
  for i in range(n):
    phase, freq = 2 * np.pi * i / max(n, 1), 2 + i % 5
    chans = [0.5 + 0.5 * np.sin(freq * np.pi * (xx * np.cos(phase) + yy * np.sin(phase)) + k)
             for k in range(c)]
    imgs.append(np.stack(chans, -1))
  return np.asarray(imgs, np.float32)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--model", default="resnet_tiny", help="a name from ntk_zoo.models.list()")
  ap.add_argument("--n", type=int, default=4, help="number of inputs (NTK is N·O × N·O)")
  ap.add_argument("--num-classes", type=int, default=10)
  ap.add_argument("--image-size", type=int, default=None)
  ap.add_argument("--implementation", default="auto")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)

  kwargs = {"num_classes": args.num_classes}
  if args.image_size:
    kwargs["image_size"] = args.image_size
  model = ntk_zoo.models.get(args.model, **kwargs)
  x = model.input_spec.preprocess(builtin_images(args.n, model.input_spec.shape))
  kernel_fn = ntk_zoo.ntk_fn(model.apply, implementation=args.implementation, trace_axes=(),
                             vmap_axes=0)
  kernel = jax.jit(lambda x, p: kernel_fn(x, None, p))
  t0 = time.perf_counter()
  theta = kernel(x, model.params).block_until_ready()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  theta = kernel(x, model.params).block_until_ready()
  run = time.perf_counter() - t0

  n, o = args.n, model.num_classes
  mat = np.asarray(jnp.transpose(theta, (0, 2, 1, 3)).reshape(n * o, n * o), np.float64)
  eig = np.linalg.eigvalsh((mat + mat.T) / 2)
  decision = next(iter(kernel_fn.decisions.values()), None) if kernel_fn.decisions else None
  print(f"model: {model.name}  params: {model.num_params:,}  inputs: {tuple(x.shape)}")
  print(f"full NTK: shape {tuple(theta.shape)}  ({n * o} x {n * o}), dtype {theta.dtype}")
  print(f"implementation: {decision.chosen if decision else args.implementation}")
  if decision:
    for name, est in decision.estimates.items():
      print(f"  estimate {name:24s} {est.flops:10.3g} FLOPs {est.bytes:10.3g} bytes")
  print(f"time: first call (trace+compile+run) {first:.2f} s, warm run {run * 1e3:.1f} ms")
  print(f"eigenvalues: max {eig[-1]:.4g}  min {eig[0]:.4g}  condition number "
        f"{eig[-1] / max(eig[0], 1e-30):.4g}  trace/N/O {np.trace(mat) / (n * o):.4g}")
  return {"theta": theta, "eigenvalues": eig}


if __name__ == "__main__":
  main()
