"""Spectra of the full NTK without forming the N·O × N·O matrix.

Θ = J Jᵀ with J = ∂f/∂θ of shape (N·O, P) (row i·O + o: logit o of example i, the layout of
`ntk_fn(f, trace_axes=())(x, None, params).transpose(0, 2, 1, 3).reshape(N * O, N * O)`).
`ntk_operator` wraps Θ·v = J(Jᵀv) (a VJP then a JVP, chunked over the examples) as a scipy
`LinearOperator`; `ntk_spectrum` runs `scipy.sparse.linalg.eigsh` (ARPACK Lanczos) on it for
the extreme eigenvalues, and adds the exact trace and a Hutch++ estimate of ||Θ||_F².

`ntk_logdet` estimates log det Θ by stochastic Lanczos quadrature (matfree's).

    >>> ntk_spectrum(apply, params, x, k=3, batch_size=64).condition_number
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from ntk_zoo.ntk.typing import PyTree

__all__ = ["ConvergenceError", "NTKOperator", "Spectrum", "ntk_logdet", "ntk_operator",
           "ntk_spectrum"]


class ConvergenceError(RuntimeError):
  """`eigsh` (ARPACK) did not converge; `__cause__` is scipy's `ArpackNoConvergence`."""


class NTKOperator(LinearOperator):
  """Θ as a symmetric float64 `LinearOperator` of shape (N·O, N·O); see `ntk_operator`.

  Attributes:
    num_examples: N.  num_outputs: O.  batch_size: examples per chunk (N when unchunked).
    dtype_compute: the params' dtype, Θ·v's.  column_block: columns per `matmat` call.
    matvecs: NTK-vector products computed so far (a `matmat` of m columns counts m).
  """

  def __init__(self, f: Callable, params: PyTree, x: PyTree, batch_size: int | None,
               vmap_axes: int | None, column_block: int = 16):
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves or not all(jnp.issubdtype(jnp.result_type(l), jnp.inexact) for l in leaves):
      raise ValueError("params must be a non-empty pytree of float arrays (they are "
                       "differentiated). Fix: close over integer or static values in f.")
    if vmap_axes is not None and not isinstance(vmap_axes, int):
      raise ValueError(f"vmap_axes must be an int (the batch axis of x and of f's output) or "
                       f"None (f mixes examples: no chunking); got {vmap_axes!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
      raise ValueError(f"batch_size must be a positive int (examples per chunk) or None; got "
                       f"{batch_size!r}.")
    if not isinstance(column_block, int) or column_block < 1:
      raise ValueError(f"column_block must be a positive int; got {column_block!r}.")
    if batch_size is not None and vmap_axes is None:
      raise ValueError("batch_size needs a batch axis: chunking assumes f is per-example. "
                       "Fix: pass vmap_axes=0 (or x's batch axis), or batch_size=None.")
    ax = 0 if vmap_axes is None else vmap_axes
    shapes = [tuple(np.shape(l)) for l in jax.tree_util.tree_leaves(x)]
    if not shapes or any(not -len(s) <= ax < len(s) for s in shapes):
      raise ValueError(f"x needs a batch axis {ax} on every leaf; got leaf shapes {shapes}. "
                       f"Fix: pass x[None] for a single example.")
    n = shapes[0][ax]
    if n == 0 or any(s[ax] != n for s in shapes):
      raise ValueError(f"Every leaf of x needs the same non-zero number of examples on axis "
                       f"{ax}; got leaf shapes {shapes}.")
    out = jax.eval_shape(f, params, x)
    if not isinstance(out, jax.ShapeDtypeStruct):
      tree = jax.tree_util.tree_structure(out)
      raise ValueError(f"f must return a single array (N, *out); got {tree}. Fix: wrap f to "
                       f"return one array (e.g. jnp.concatenate of the flattened leaves).")
    if not -out.ndim <= ax < out.ndim or out.shape[ax] != n:
      raise ValueError(f"f's output {out.shape} needs the {n} examples of x on axis {ax}. Fix: "
                       f"pass x with a batch axis (x[None] for one example), or set vmap_axes.")
    self.num_examples, self.num_outputs = n, math.prod(out.shape) // n
    self.batch_size = n if batch_size is None else min(batch_size, n)
    self.dtype_compute, self.column_block, self.matvecs = jnp.result_type(*leaves), column_block, 0
    self._f, self._params, self._axis, self._ax = f, params, vmap_axes, ax
    self._out_dtype = out.dtype
    self._chunks = -(-n // self.batch_size)
    # x as (chunks, batch_size, ...): batch axis first, the last chunk padded by repetition.
    index = np.arange(self._chunks * self.batch_size) % n
    self._xs = jax.tree_util.tree_map(
        lambda l: jnp.moveaxis(jnp.asarray(l), ax, 0)[index].reshape(
            self._chunks, self.batch_size, *np.delete(np.shape(l), ax)), x)
    self._theta, self._diag = jax.jit(self._theta_v), jax.jit(self._diagonal)
    super().__init__(np.float64, (n * self.num_outputs,) * 2)

  def _g(self, params: PyTree, xc: PyTree) -> jax.Array:
    """f on one chunk (leaves (B, ...), batch first) as a (B, O) array."""
    xc = jax.tree_util.tree_map(lambda l: jnp.moveaxis(l, 0, self._ax), xc)
    out = jnp.moveaxis(self._f(params, xc), self._ax, 0)
    return out.reshape(out.shape[0], -1)

  def _theta_v(self, params: PyTree, xs: PyTree, vs: jax.Array) -> jax.Array:
    """(C, m, B, O) cotangents -> Θ times them, (C, m, B, O): Jᵀv summed over chunks, then J."""
    def body(acc, xc_vc):
      xc, vc = xc_vc
      _, pull = jax.vjp(lambda p: self._g(p, xc), params)
      grads = jax.vmap(lambda c: pull(c)[0])(vc)
      return jax.tree_util.tree_map(jnp.add, acc, grads), None
    acc = jax.tree_util.tree_map(lambda p: jnp.zeros((vs.shape[1], *p.shape), p.dtype), params)
    tangent, _ = jax.lax.scan(body, acc, (xs, vs))
    def push(xc):
      _, lin = jax.linearize(lambda p: self._g(p, xc), params)
      return jax.vmap(lin)(tangent)
    return jax.lax.map(push, xs)

  def _diagonal(self, params: PyTree, xs: PyTree) -> jax.Array:
    """diag(Θ) as (C, B, O): ||∂f_o(x_i)/∂θ||², per example (vmap) or per chunk (jacrev)."""
    def sq_norms(g):
      nd = len(jax.eval_shape(g, params).shape)
      return sum(jnp.sum(jnp.square(l), tuple(range(nd, l.ndim)))
                 for l in jax.tree_util.tree_leaves(jax.jacrev(g)(params)))
    if self._axis is None:
      return jax.lax.map(lambda xc: sq_norms(lambda p: self._g(p, xc)), xs)
    expand = lambda xi: jax.tree_util.tree_map(lambda l: l[None], xi)
    one = lambda xi: sq_norms(lambda p: self._g(p, expand(xi))[0])
    return jax.lax.map(jax.vmap(one), xs)

  def diagonal(self) -> np.ndarray:
    """diag(Θ), (N·O,) float64, exact: O reverse passes per example, batch_size·O·P memory."""
    d = np.asarray(self._diag(self._params, self._xs), np.float64)
    return d.reshape(-1)[: self.shape[0]]

  def _block(self, v: np.ndarray) -> np.ndarray:
    """Θ·V for V (N·O, m) float64 in one jitted call."""
    c, b, o, m = self._chunks, self.batch_size, self.num_outputs, v.shape[1]
    padded = np.pad(v, ((0, c * b * o - v.shape[0]), (0, 0)))  # zero cotangent for padding
    vs = jnp.asarray(padded.reshape(c, b, o, m).transpose(0, 3, 1, 2), self._out_dtype)
    out = np.asarray(self._theta(self._params, self._xs, vs), np.float64)
    return out.transpose(0, 2, 3, 1).reshape(c * b * o, m)[: v.shape[0]]

  def _matvec(self, v: np.ndarray) -> np.ndarray:
    self.matvecs += 1
    return self._block(np.asarray(v, np.float64).reshape(-1, 1)).reshape(np.shape(v))

  def _matmat(self, v: np.ndarray) -> np.ndarray:
    v, m = np.asarray(v, np.float64), v.shape[1]
    self.matvecs, width = self.matvecs + m, self.column_block if m > 1 else 1
    v = np.pad(v, ((0, 0), (0, -m % width)))
    return np.concatenate([self._block(v[:, j:j + width])
                           for j in range(0, v.shape[1], width)], 1)[:, :m]

  def jax_matvec(self, v: jax.Array) -> jax.Array:
    """Θ·v for a flat (N·O,) jax array, traceable (for JAX matrix-free solvers)."""
    c, b, o, n = self._chunks, self.batch_size, self.num_outputs, self.shape[0]
    vs = jnp.pad(v, (0, c * b * o - n)).reshape(c, b, o, 1).transpose(0, 3, 1, 2)
    out = self._theta_v(self._params, self._xs, vs.astype(self._out_dtype))
    return out.transpose(0, 2, 3, 1).reshape(-1)[:n].astype(v.dtype)

  def _adjoint(self) -> NTKOperator:  # Θ is symmetric: rmatvec = matvec
    return self


def ntk_operator(f: Callable, params: PyTree, x: PyTree, *, batch_size: int | None = None,
                 vmap_axes: int | None = 0, column_block: int = 16) -> NTKOperator:
  """The full NTK Θ = J Jᵀ of `f` on `x` as a matrix-free scipy `LinearOperator`.

  `op @ v` is Θ·v = J(Jᵀv): for each chunk c of examples a VJP of f at v_c, summed (Jᵀv, a
  params-shaped tangent), then a JVP per chunk (J_c Jᵀv), all in one jitted function compiled
  once (for `matvec`, and once for `matmat`'s zero-padded blocks of `column_block` columns).

  Args:
    f: `f(params, x) -> outputs`, a single array (N, *out) (O = prod(out)) with the examples on
      axis `vmap_axes`; per-example (no cross-example mixing) unless `vmap_axes` is None.
    params: pytree of float arrays; Θ·v is computed in their dtype.
    x: array or pytree of arrays, the N examples on axis `vmap_axes` of every leaf.
    batch_size: examples per chunk, bounding memory to about one batch_size forward-backward;
      the last chunk is padded (repeated examples, zero cotangent). None: all N at once.
    vmap_axes: the batch axis of x's leaves and of f's output, or None when f mixes examples
      (e.g. BatchNorm in training mode: then no chunking, and the examples are output axis 0).
    column_block: columns per vmapped call of `matmat` (memory grows with it); 1 loops over
      `matvec` (no second compile).

  Returns:
    An `NTKOperator` of shape (N·O, N·O), dtype float64 (inputs are cast to the compute dtype,
    results back to float64), row i·O + o = logit o of example i; also `op.diagonal()`.

  Raises:
    ValueError: x without a batch axis, batch_size < 1, non-float params, f not one array.
  """
  return NTKOperator(f, params, x, batch_size, vmap_axes, column_block)


@dataclasses.dataclass(frozen=True, eq=False)
class Spectrum:
  """Extreme eigenvalues and spectral summaries of the full NTK (size = N·O).

  Attributes:
    largest: the k largest eigenvalues, (k,) descending (empty if not requested).
    smallest: the k smallest eigenvalues, (k,) ascending (empty if not requested).
    condition_number: largest[0] / smallest[0]; inf when smallest[0] <= max(tol, eps)·λmax
      (Θ is PSD: singular at the accuracy eigsh was asked for), nan unless both were computed.
    trace: tr(Θ) = Σ_i Σ_o ||∂f_o(x_i)/∂θ||², exact.
    frobenius_sq: Hutch++ estimate of ||Θ||_F² = tr(Θ²): ||ΘQ||_F² exactly for Q spanning
      ΘS (S: s = num_probes/3 probes), plus Hutchinson (r = num_probes - 2s Rademacher probes)
      for ||R||_F², R = Θ(I - QQᵀ); relative standard error <= sqrt(2/r)·||R||_F²/||Θ||_F².
    frobenius_rel_err: that error as estimated from the probes' spread (0 when s >= size).
    effective_rank: trace² / frobenius_sq, the participation ratio (1 ≤ · ≤ size).
    matvecs: NTK-vector products used.  size: N·O.  tol: eigsh's.  seconds: wall time.
  """
  largest: np.ndarray
  smallest: np.ndarray
  condition_number: float
  trace: float
  frobenius_sq: float
  frobenius_rel_err: float
  effective_rank: float
  matvecs: int
  size: int
  tol: float
  seconds: float


def ntk_spectrum(f: Callable, params: PyTree, x: PyTree, *, k: int = 1, tol: float = 1e-6,
                 batch_size: int | None = None,
                 which: str | Sequence[str] = ("largest", "smallest"),
                 maxiter: int | None = None, seed: int = 0, num_probes: int = 64,
                 vmap_axes: int | None = 0, column_block: int = 16) -> Spectrum:
  """Extreme eigenvalues, condition number, trace and effective rank of the full NTK.

  Matrix-free: `eigsh` (ARPACK) on `ntk_operator(f, params, x)`, 'LA' for the largest and 'SA'
  for the smallest eigenvalues, with ncv = min(max(2k + 1, 20), size) and a seeded start.

  Args:
    f, params, x, batch_size, vmap_axes, column_block: as in `ntk_operator`.
    k: eigenvalues wanted at each end, 1 <= k < N·O.
    tol: eigsh's relative accuracy of the eigenvalues (0: machine precision).
    which: "largest", "smallest" or both.
    maxiter: eigsh's restart limit (None: scipy's default, 10·size).
    seed: seeds eigsh's start vector and the Hutch++ probes.
    num_probes: matvecs for ||Θ||_F² (>= 4; Hutch++ uses a third each to sketch, to project
      and to probe the rest). Its error is reported as `frobenius_rel_err`.

  Returns:
    A `Spectrum`.

  Raises:
    ValueError: bad arguments (see `ntk_operator`; k, tol, which, num_probes).
    ConvergenceError: eigsh did not converge; the message names the fix (maxiter, tol).
  """
  start = time.perf_counter()
  which = (which,) if isinstance(which, str) else tuple(which)
  if not which or not set(which) <= {"largest", "smallest"}:
    raise ValueError(f"which must be 'largest', 'smallest' or both; got {which!r}.")
  if not isinstance(num_probes, int) or num_probes < 4:
    raise ValueError(f"num_probes must be an int >= 4 (Hutch++); got {num_probes!r}.")
  if not tol >= 0:
    raise ValueError(f"tol must be >= 0 (0: machine precision); got {tol!r}.")
  op = ntk_operator(f, params, x, batch_size=batch_size, vmap_axes=vmap_axes,
                    column_block=column_block)
  n = op.shape[0]
  if not isinstance(k, int) or not 1 <= k < n:
    raise ValueError(f"k must be an int with 1 <= k < N·O = {n} (eigsh cannot return all "
                     f"eigenvalues); got {k!r}. Fix: a smaller k, or np.linalg.eigvalsh on "
                     f"the dense kernel from ntk_fn(f, trace_axes=()).")
  rng = np.random.default_rng(seed)
  ncv, v0, ends = min(max(2 * k + 1, 20), n), rng.standard_normal(n), {}
  for end, mode in ((e, "LA" if e == "largest" else "SA") for e in which):
    try:
      w = eigsh(op, k, which=mode, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0,
                return_eigenvectors=False)
    except ArpackNoConvergence as err:
      iters = maxiter or 10 * n
      raise ConvergenceError(
          f"eigsh did not converge to the {k} {end} eigenvalue(s) of the {n}×{n} NTK (which="
          f"{mode!r}, tol={tol:g}, maxiter={iters}, ncv={ncv}; {len(err.eigenvalues)} converged)."
          f" Fix: pass a larger maxiter (e.g. maxiter={10 * iters}) or a looser tol (e.g. tol="
          f"{max(tol, 1e-8) * 100:g}); small eigenvalues of ill-conditioned NTKs converge slowest."
      ) from err
    ends[end] = np.sort(w)
  largest = ends.get("largest", np.zeros(0))[::-1].copy()
  smallest = ends.get("smallest", np.zeros(0))
  cond = math.nan
  if largest.size and smallest.size and largest[0] > 0:
    floor = max(tol, float(np.finfo(op.dtype_compute).eps)) * largest[0]
    cond = math.inf if smallest[0] <= floor else float(largest[0] / smallest[0])
  trace, (frob, rel) = float(op.diagonal().sum()), _hutchpp_frobenius_sq(op, num_probes, rng)
  return Spectrum(largest=largest, smallest=smallest, condition_number=cond, trace=trace,
                  frobenius_sq=frob, frobenius_rel_err=rel,
                  effective_rank=trace ** 2 / frob if frob > 0 else math.nan,
                  matvecs=op.matvecs, size=n, tol=tol, seconds=time.perf_counter() - start)


def _hutchpp_frobenius_sq(op: NTKOperator, num_probes: int,
                          rng: np.random.Generator) -> tuple[float, float]:
  """Hutch++ for tr(Θ²) = ||Θ||_F²: (estimate, relative standard error).

  tr(Θ²) = ||ΘQ||_F² + tr((I - QQᵀ)Θ²(I - QQᵀ)) exactly, for Q an orthonormal basis of ΘS (S
  random, s columns; ΘS spans Θ's top eigenspace, where NTK spectra concentrate); the second
  term is E||Θ(I - QQᵀ)z||² for Rademacher z (r probes).
  """
  n = op.shape[0]
  q, _ = np.linalg.qr(op.matmat(rng.choice([-1.0, 1.0], (n, min(num_probes // 3, n)))))
  exact = float(np.sum(op.matmat(q) ** 2))
  r = num_probes - 2 * q.shape[1] if q.shape[1] < n else 0
  if r == 0:
    return exact, 0.0
  z = rng.choice([-1.0, 1.0], (n, r))
  samples = np.sum(op.matmat(z - q @ (q.T @ z)) ** 2, axis=0)
  total, err = exact + float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(r))
  return total, err / total if total > 0 else math.inf


def ntk_logdet(f: Callable, params: PyTree, x: PyTree, *, order: int = 30,
               num_probes: int = 32, batch_size: int | None = None, vmap_axes: int | None = 0,
               shift: float = 0.0, seed: int = 0) -> tuple[float, float]:
  """log det(Θ + shift·I) of the full NTK by stochastic Lanczos quadrature, matrix-free.

  Each of `num_probes` Gaussian probes runs `order` Lanczos steps (full reorthogonalization)
  on NTK-vector products; the quadrature of log on the tridiagonal gives zᵀ log(Θ) z
  (`matfree.funm.monte_carlo_funm_sym_logdet`). Θ must be positive definite: pass a `shift`
  (a ridge) for a singular or nearly singular NTK.

  Args:
    f, params, x, batch_size, vmap_axes: as in `ntk_operator`.
    order: Lanczos steps per probe (<= N·O); the error falls fast with it for well-separated
      spectra.
    num_probes: probes averaged.
    shift: added to the diagonal.
    seed: seeds the probes.

  Returns:
    (estimate, standard error of the mean over the probes).
  """
  from matfree import decomp, funm, stochtrace  # pylint: disable=g-import-not-at-top
  op = ntk_operator(f, params, x, batch_size=batch_size, vmap_axes=vmap_axes)
  n = op.shape[0]
  if not isinstance(order, int) or not 1 <= order <= n:
    raise ValueError(f"order must be an int in [1, N·O = {n}]; got {order!r}.")
  if not isinstance(num_probes, int) or num_probes < 2:
    raise ValueError(f"num_probes must be an int >= 2; got {num_probes!r}.")
  dtype = op.dtype_compute

  def matvec(v):
    return op.jax_matvec(v) + shift * v

  integrand = funm.monte_carlo_funm_sym_logdet(decomp.tridiag_sym(order, reortho="full"))
  sampler = stochtrace.sampler_normal(jnp.zeros(n, dtype), num=num_probes)
  estimate = jax.jit(stochtrace.estimator_monte_carlo_mean_and_sem(integrand, sampler),
                     static_argnums=0)
  mean, sem = estimate(matvec, jax.random.PRNGKey(seed))
  return float(mean), float(sem)
