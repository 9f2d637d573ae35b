"""The paper's Fig. 2 / Fig. 4 on this machine: the full NTK of ImageNet models, one pair of 224² images.

Models: ResNet-18/50/152 (`pure_resnet`: a pure JAX function, so neural-tangents 0.6.5 can run
the identical program in its own venv), wide_resnet50_2, ViT-B/16 and Mixer-B/16 (the zoo's
Flax models, random init). O ∈ {10, 100, 1000} logits; kernel Θ(x1, x2) of shape
(1, 1, O, O) (`ntk_fn(f, implementation=…, trace_axes=(), vmap_axes=0)`, default memory budget,
jitted). Methods: SD, VP, JC, auto, and the naive baseline (O single-logit VJPs per input — the
per-logit gradients stacked by `lax.map` — then their Gram), each in its own subprocess; with
`--peer-venv`, neural-tangents' SD/VP/JC on the ResNets.

Per cell: compile time (trace + lower + compile, including planning), the first run and warm
runs (`--repeats`; 0 = the first run only, for the slow cells), peak RSS during the runs, XLA's
temporary buffers, the plan (`kernel.last_decision`). Correctness: an 8×8 sub-block of Θ (logits
spread over 0..O-1) against the Gram of the per-logit gradients computed with `jax.grad`
(max error relative to the block's largest entry).

    python benchmarks/imagenet.py --models rn50 --outputs 1000 --implementations auto --repeats 0
    python benchmarks/imagenet.py --models rn50 --outputs 10 --implementations sd \\
        --peer-venv ~/.cache/ntk_zoo/nt-venv --peer-implementations sd
    python benchmarks/imagenet.py --report-only --markdown        # table into RESULTS.md

Records go to `benchmarks/out/imagenet.jsonl`; `--markdown` rewrites the
`<!-- imagenet:begin/end -->` section of RESULTS.md.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position

BEGIN, END = "<!-- imagenet:begin -->", "<!-- imagenet:end -->"
PURE = ("rn18", "rn50", "rn152")
ZOO = {"wrn50_2": "wide_resnet50_2", "vit_b16": "vit_b16", "mixer_b16": "mixer_b16"}
MODELS = PURE + tuple(ZOO)
SD, VP, JC, AUTO, NAIVE = methods.SD, methods.VP, methods.JC, methods.AUTO, methods.NAIVE
METHODS = (SD, VP, JC, AUTO, NAIVE)
SHORT = {m: methods.SHORT[m] for m in METHODS}
ALIASES = {SHORT[m].lower(): m for m in METHODS}  # sd, vp, jc, auto, naive.
impl_list = methods.impl_parser(METHODS)
IMAGE_SIZE = 224


def _model(name: str, outputs: int):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if name in PURE:
    f, params = pure_resnet.model(name, outputs)
    return f, params
  import ntk_zoo  # pylint: disable=g-import-not-at-top
  m = ntk_zoo.models.get(ZOO[name], num_classes=outputs)
  return m.apply, jax.tree_util.tree_map(jnp.asarray, m.params)


def naive_kernel(f):
  """O single-logit VJPs per input (stacked with `lax.map`), then the Gram of the gradients."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def grads(p, x):
    out, vjp = jax.vjp(lambda q: f(q, x), p)
    eye = jnp.eye(out.shape[-1], dtype=out.dtype)[:, None, :]
    g = jax.lax.map(lambda e: vjp(e)[0], eye)
    return jnp.concatenate([l.reshape(l.shape[0], -1) for l in jax.tree_util.tree_leaves(g)], 1)

  def kernel(a, b, p):
    g1, g2 = grads(p, a), grads(p, b)
    return (g1 @ g2.T)[None, None]

  return kernel


def check_block(f, params, x1, x2, theta, outputs: int) -> float:
  """Max error of an 8×8 sub-block of Θ vs the Gram of per-logit gradients (jax.grad).

  One compiled gradient (the logit is a traced index); x1's 8 gradients are held in float32
  (8·P·4 bytes) and each of x2's is dotted with them in float64, one at a time.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  idx = sorted({int(i) for i in np.linspace(0, outputs - 1, 8)})
  grad = jax.jit(jax.grad(lambda p, x, o: f(p, x)[0, o]))

  def grad_vec(x, o, dtype):
    g = grad(params, x, np.int32(o))
    return np.concatenate([np.asarray(l, dtype).ravel() for l in jax.tree_util.tree_leaves(g)])

  g1 = [grad_vec(x1, o, np.float32) for o in idx]
  ref = np.empty((len(idx), len(idx)))
  for j, o in enumerate(idx):
    g2 = grad_vec(x2, o, np.float64)
    for i, row in enumerate(g1):
      ref[i, j] = np.dot(row.astype(np.float64), g2)
  got = np.asarray(theta, np.float64)[0, 0][np.ix_(idx, idx)]
  return float(np.abs(got - ref).max() / np.abs(ref).max())


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in peer_resnet.META_KEYS}

  def measure():
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    info = harness.cell_info(harness.package_version("ntk_zoo"))
    f, params = _model(cell["arch"], cell["outputs"])
    info["num_params"] = pure_resnet.num_params(params)
    x1, x2 = (jnp.asarray(x) for x in pure_resnet.inputs(1, IMAGE_SIZE))
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    impl = cell["implementation"]
    if impl == NAIVE:
      fn = naive_kernel(f)
    else:
      from ntk_zoo import ntk_fn  # pylint: disable=g-import-not-at-top
      kernel = ntk_fn(f, implementation=impl, trace_axes=(), vmap_axes=0)
      fn = lambda a, b, p: kernel(a, b, p)  # noqa: E731
    res = harness.time_fn(fn, x1, x2, params, repeats=cell["repeats"], time_budget_s=budget,
                          min_repeats=min(1, cell["repeats"]),
                          min_time_s=0.0 if cell["repeats"] == 0 else 1.0, keep_output=True)
    theta = res.pop("_out", None)
    info.update(res)
    if impl != NAIVE and kernel.last_decision is not None:
      d = kernel.last_decision
      info["chosen"] = d.chosen
      info["plan"] = str(d.plan)
      info["plan_peak_mb"] = d.plan.peak_bytes / 2 ** 20
      info["plan_flops"] = d.plan.flops
      if d.plan.measured_bytes:
        info["plan_xla_mb"] = d.plan.measured_bytes / 2 ** 20
    if theta is not None:
      info["block_err"] = check_block(f, params, x1, x2, theta, cell["outputs"])
    return info

  harness.cell_main(measure, meta)


# ---------------------------------------------------------------------------------------------
# The sweep and the report.

cell_key = harness.record_key("library", "implementation", "arch", "outputs")


def build_jobs(args, peer_python):
  jobs = []
  for arch in args.models:
    for o in args.outputs:
      base = {"benchmark": "imagenet", "arch": arch, "n": 1, "outputs": o, "dtype": "float32",
              "image_size": IMAGE_SIZE, "model": "pure" if arch in PURE else "zoo"}
      for impl in args.implementations:
        meta = dict(base, library=methods.OURS, implementation=impl)
        cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout)
        jobs.append((meta, harness.cell_command(__file__, cell)))
        if peer_python and arch in PURE and impl in args.peer_implementations:
          pmeta = dict(base, library=methods.PEER, implementation=impl)
          pcell = dict(pmeta, repeats=args.repeats, timeout_s=args.timeout)
          jobs.append((pmeta, harness.cell_command(peer_resnet.__file__, pcell, peer_python)))
  return jobs


def _fmt_s(rec: dict) -> str:
  if rec.get("status") != "ok":
    return rec.get("status", "?")
  t = rec.get("median_s") or rec.get("first_run_s")
  mark = "" if rec.get("median_s") else "¹"
  return f"{t:.3g}{mark}"


def markdown(records: list[dict], commands: list[str]) -> str:
  rows = sorted(reporting.latest(records, cell_key),
                key=lambda r: (MODELS.index(r["arch"]) if r["arch"] in MODELS else 99,
                               r["outputs"], r["library"], r["implementation"]))
  loads = [x for r in rows for x in (r.get("loadavg_1m") or [])]
  out = [
      "## ImageNet models: the full O×O NTK of one pair of 224² images (paper Fig. 2 / Fig. 4)",
      "",
      "Commands: " + "; ".join(f"`{c}`" for c in commands),
      "",
      f"Machine: {harness.machine_info()['cpu_count']} CPUs "
      f"({harness.machine_info()['cpu_model']}); load (1-min average at cell start): "
      + (f"{min(loads):.1f}–{max(loads):.1f}" if loads else "n/a") + ".",
      "",
      "Time: warm median (s); ¹ first run after compiling (the only run for slow cells). "
      "Peak RSS: the process's peak resident memory (MB: imports, inputs, compilation and "
      "runs). Run peak: the peak during the runs minus the RSS after imports (MB). "
      "Block err: an 8×8 sub-block of Θ vs the Gram of per-logit `jax.grad` gradients.",
      "",
      "| model | O | library | method | chosen / plan | time s | compile s | peak RSS MB "
      "| run peak MB | XLA temp MB | block err |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    peak = r.get("run_peak_mb", r.get("peak_mb"))
    out.append(reporting.row([
        r["arch"], r["outputs"], r["library"], SHORT.get(r["implementation"], r["implementation"]),
        (r.get("plan") or "").replace("|", "/"), _fmt_s(r), reporting.fmt_num(r.get("compile_s")),
        reporting.fmt_num(r.get("peak_rss_mb")), reporting.fmt_num(peak),
        reporting.fmt_num(r.get("xla_temp_mb")),
        f"{r['block_err']:.1e}" if r.get("block_err") is not None else "—"]))
  return "\n".join(out) + "\n"


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="rn18,rn50", type=lambda s: [m for m in s.split(",") if m])
  ap.add_argument("--outputs", default="10,100,1000", type=methods.int_list)
  ap.add_argument("--implementations", default="auto", type=impl_list)
  ap.add_argument("--peer-venv", default=None)
  ap.add_argument("--peer-implementations", default="sd", type=impl_list)
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--timeout", type=float, default=1800)
  ap.add_argument("--mem-limit-mb", type=float, default=21000)
  ap.add_argument("--out", default=os.path.join(harness.BENCHMARKS, "out", "imagenet.jsonl"))
  ap.add_argument("--results-md", default=os.path.join(harness.BENCHMARKS, "RESULTS.md"))
  ap.add_argument("--markdown", action="store_true")
  ap.add_argument("--report-only", action="store_true")
  args = ap.parse_args(argv)
  bad = [m for m in args.models if m not in MODELS]
  if bad:
    ap.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  cmd = "python benchmarks/imagenet.py " + " ".join(shlex.quote(a) for a in argv)
  if not args.report_only:
    peer_python = os.path.join(args.peer_venv, "bin", "python") if args.peer_venv else None
    jobs = build_jobs(args, peer_python)
    for i, (meta, job) in enumerate(jobs):
      print(f"[{i + 1}/{len(jobs)}] {meta['library']} {SHORT.get(meta['implementation'])} "
            f"{meta['arch']} O={meta['outputs']}", flush=True)
      rec = harness.run_cell(job, args.timeout, args.mem_limit_mb, cwd=harness.REPO)
      rec.update({k: v for k, v in meta.items() if k not in rec})
      rec["command"] = cmd
      harness.append_jsonl(args.out, rec)
      print(f"    {rec.get('status')} time {_fmt_s(rec)} s peak "
            f"{reporting.fmt_num(rec.get('run_peak_mb', rec.get('peak_mb')))} MB "
            f"{rec.get('plan', '')} err {rec.get('block_err')}", flush=True)
  if args.markdown:
    records = harness.read_jsonl(args.out)
    commands = list(dict.fromkeys(r["command"] for r in records if r.get("command")))
    reporting.replace_between_markers(args.results_md, BEGIN, END, markdown(records, commands))


if __name__ == "__main__":
  harness.script_main(main, run_one_cell)
