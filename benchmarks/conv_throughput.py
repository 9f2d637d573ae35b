"""XLA CPU convolution throughput: forward, input-VJP, and the same VJP as patches @ matmul.

ResNet-50 layer shapes, batch 64 (the stacked output directions of a sweep), NHWC, float32;
warm median of 3 runs after one compile. Prints GFLOP/s per layer shape and the max difference
between the two VJP routes. Run: `python benchmarks/conv_throughput.py`.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = [(56, 64, 3, 1, 64), (56, 128, 3, 2, 128), (14, 256, 3, 1, 256), (56, 64, 1, 1, 256),
          (7, 512, 3, 1, 512)]  # (H, C_in, K, stride, C_out)


def bench(f, *a, r=3):
  f = jax.jit(f)
  jax.block_until_ready(f(*a))
  ts = []
  for _ in range(r):
    t = time.perf_counter()
    jax.block_until_ready(f(*a))
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def conv(x, w, s, pad):
  return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)


def main(batch: int = 64) -> None:
  for h, c, k, s, c_out in SHAPES:
    pad = [(k // 2, k // 2)] * 2 if s == 1 else [(0, 1), (0, 1)]
    x = jnp.ones((batch, h, h, c))
    w = jnp.full((k, k, c, c_out), 0.01)
    h_out = (h + sum(pad[0]) - k) // s + 1
    flops = 2 * batch * h_out * h_out * k * k * c * c_out
    g = jnp.ones((batch, h_out, h_out, c_out))

    def fwd(x, w=w, s=s, pad=pad):
      return conv(x, w, s, pad)

    def vjp(g, fwd=fwd, x=x):
      return jax.vjp(fwd, x)[1](g)[0]

    def patches(x, k=k, s=s, pad=pad):  # (batch, h_out, h_out, c·k·k), channel-major
      return lax.conv_general_dilated_patches(x, (k, k), (s, s), pad, dimension_numbers=DN)

    w_mat = jnp.transpose(w, (2, 0, 1, 3)).reshape(c * k * k, c_out)

    def vjp_matmul(g, patches=patches, w_mat=w_mat, x=x):  # col2im(g @ Wᵀ)
      return jax.linear_transpose(patches, x)(g @ w_mat.T)[0]

    t_fwd, t_vjp, t_mm = bench(fwd, x), bench(vjp, g), bench(vjp_matmul, g)
    err = float(jnp.max(jnp.abs(vjp(g) - vjp_matmul(g))))
    print(f"{h}x{h} {c}->{c_out} {k}x{k} stride {s}: forward {flops / t_fwd / 1e9:.0f} GFLOP/s, "
          f"input-VJP {flops / t_vjp / 1e9:.0f}, patches@matmul VJP {flops / t_mm / 1e9:.0f} "
          f"(max diff {err:.1e})", flush=True)


if __name__ == "__main__":
  main()
