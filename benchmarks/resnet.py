"""ResNet-18 (32², CIFAR-size) and ResNet-50 (224²): full empirical NTK of one pair of inputs.

Model: `pure_resnet` — torchvision's ResNet-18/50 as a pure JAX function (explicit params dict,
`lax.conv_general_dilated`, BatchNorm in inference mode with fixed statistics), so that ntk_zoo
(current JAX) and neural-tangents 0.6.5 (JAX 0.4.23, its own venv) differentiate the identical
function with bit-identical parameters and inputs. It is the same architecture as the zoo's Flax
`ntk_zoo.models.resnet` (same parameter names; `pure_resnet.as_flax_variables`), which is timed as
an extra row ("zoo Flax model", ours only) with the same numbers.

Cells (default): rn18 with O ∈ {10, 100} at 32×32 and rn50 with O = 10 at 224×224; x1, x2 one
image each (N = 1); kernel Θ(x1, x2) of shape (1, 1, O, O) (`trace_axes=()`, `vmap_axes=0`),
float32, jitted. Per cell, back to back, one subprocess each:

  ours SD, peer SD, ours VP, peer VP, ours JC, peer JC, ours auto (records `kernel.decisions`),
  ours jacrev (baseline: `jax.jit(lambda p, a, b: (jax.jacrev(f)(p, a), jax.jacrev(f)(p, b)))`),
  [peer jacrev: the same plain-JAX program in the peer's venv, with `--peer-implementations
  ...,jacrev`: what JAX 0.4.23 vs current JAX alone changes], ours SD on the zoo's Flax model
  (rn18 only).

    python benchmarks/resnet.py --peer-venv ~/.cache/ntk_zoo/nt-venv --markdown
    python benchmarks/resnet.py --cells rn18:10 --implementations sd,auto        # ours only
    python benchmarks/resnet.py --report-only --markdown                          # table only
    python benchmarks/resnet.py --peer-venv ~/.cache/ntk_zoo/nt-venv --cells rn18:10 \
        --implementations jacrev --peer-implementations jacrev --zoo-implementations '' --append

Timing/memory: `common.time_fn` (compile separately; median of ≥ `--repeats` warm runs; peak RSS
during the runs) inside `common.run_cell` (per-cell timeout and memory cap). Results: the
`<!-- resnet:begin/end -->` section of RESULTS.md; raw records `benchmarks/out/resnet.jsonl`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBRARY = "ntk_zoo"
PEER = peer_resnet.LIBRARY
PEAK = "run_peak_mb"
BEGIN, END = "<!-- resnet:begin -->", "<!-- resnet:end -->"

SD, VP, JC, AUTO, JACREV = ("structured_derivatives", "ntk_vector_products",
                            "jacobian_contraction", "auto", "jacrev")
OUR_IMPLS = (SD, VP, JC, AUTO, JACREV)
PEER_IMPLS = (SD, VP, JC)
SHORT = dict(common.SHORT, jacrev="jacrev")
_ALIASES = {"sd": SD, "vp": VP, "jc": JC, "auto": AUTO, "jacrev": JACREV,
            SD: SD, VP: VP, JC: JC}
DEFAULT_CELLS = "rn18:10,rn18:100,rn50:10"

# The peer's numbers in ../shared/facts.md (ms; Flax ResNets, measured earlier on this machine):
# "released" = neural-tangents 0.6.5 on JAX 0.4.23, "same XLA" = its GitHub head on JAX 0.10.2.
FACTS = {
    ("rn18", 10): {"released": {JC: 971, VP: 604, SD: 190},
                   "same_xla": {JC: 872, VP: 365, SD: 144}},
    ("rn18", 100): {"released": {JC: 10700, VP: 5610, SD: 986},
                    "same_xla": {JC: 13600, VP: 3420, SD: 938}},
    # ResNet-50 O=10: same-XLA peer SD 3.26 s; plain jax.jacrev of both inputs 5.6 s (JAX 0.10).
    ("rn50", 10): {"released": {}, "same_xla": {SD: 3260, JACREV: 5600}},
}


# ---------------------------------------------------------------------------------------------
# One cell (runs in a subprocess of ntk_zoo's venv).

def _our_model(cell: dict):
  """(f, params) for the cell: the pure model, or the zoo's Flax module with the same numbers."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params, stats = pure_resnet.init(cell["arch"], cell["outputs"])
  if cell["model"] == "pure":
    return pure_resnet.make_apply(cell["arch"], stats), jax.tree_util.tree_map(jnp.asarray, params)
  from ntk_zoo.models import resnet as zoo_resnet  # pylint: disable=g-import-not-at-top
  from ntk_zoo.models.adapters import from_linen  # pylint: disable=g-import-not-at-top
  module = zoo_resnet.make_module(pure_resnet.ZOO_NAMES[cell["arch"]], num_classes=cell["outputs"])
  s = cell["image_size"]
  m = from_linen(module, pure_resnet.as_flax_variables(params, stats), input_spec=(s, s, 3),
                 apply_kwargs={"train": False})
  return m.apply, jax.tree_util.tree_map(jnp.asarray, m.params)


def run_one_cell(cell: dict) -> None:
  meta = {k: cell[k] for k in peer_resnet.META_KEYS}

  def measure():
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    info = {"library_version": common.package_version("ntk_zoo")}
    info.update(common.jax_info())
    f, params = _our_model(cell)
    info["num_params"] = pure_resnet.num_params(params)
    x1, x2 = (jnp.asarray(x) for x in pure_resnet.inputs(cell["n"], cell["image_size"]))
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    impl = cell["implementation"]
    if impl == JACREV:
      jac = jax.jacrev(f)
      res = common.time_fn(lambda p, a, b: (jac(p, a), jac(p, b)), params, x1, x2,
                           repeats=cell["repeats"], time_budget_s=budget)
      res["jacobian_norm"] = res.pop("kernel_norm")  # Not a kernel: keep out of the agreement.
      res["kernel_shape"] = None
      info.update(res)
      return info
    from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
    kernel = ntk_fn(f, implementation=impl, trace_axes=(), vmap_axes=0)
    info.update(common.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                               repeats=cell["repeats"], time_budget_s=budget))
    if impl == AUTO and kernel.decisions:
      d = next(iter(kernel.decisions.values()))
      info["auto_chosen"] = d.chosen
      info["auto_estimates"] = {k: {"flops": v.flops, "bytes": v.bytes, "cost": v.cost}
                                for k, v in d.estimates.items()}
    return info

  common.cell_main(measure, meta)


# ---------------------------------------------------------------------------------------------
# The sweep.

def cell_key(rec: dict) -> tuple:
  return (rec.get("library"), rec.get("model"), rec.get("implementation"), rec.get("arch"),
          rec.get("outputs"), rec.get("n"), rec.get("image_size"))


def parse_cells(s: str) -> list[tuple[str, int]]:
  out = []
  for item in s.replace(" ", "").split(","):
    if not item:
      continue
    arch, _, o = item.partition(":")
    if arch not in pure_resnet.ARCHS or not o.isdigit():
      raise argparse.ArgumentTypeError(f"cell {item!r}: use ARCH:O with ARCH in "
                                       f"{sorted(pure_resnet.ARCHS)}, e.g. rn18:10")
    out.append((arch, int(o)))
  return out


def impl_list(s: str) -> list[str]:
  out = []
  for v in s.replace(" ", "").split(","):
    if v:
      if v.lower() not in _ALIASES:
        raise argparse.ArgumentTypeError(f"unknown implementation {v!r}; use sd, vp, jc, auto, "
                                         "jacrev")
      out.append(_ALIASES[v.lower()])
  return out


def skip_list(s: str) -> set[tuple[str, str]]:
  out = set()
  for v in s.replace(" ", "").split(","):
    if v:
      arch, _, impl = v.partition(":")
      out.add((arch, _ALIASES.get(impl.lower(), impl)))
  return out


def build_jobs(args, peer_python: str | None) -> list[tuple[dict, list[str] | None]]:
  """(meta, cmd) in run order; cmd None for a cell skipped by --skip (recorded as skipped)."""
  jobs = []
  for arch, o in args.cells:
    base = {"benchmark": "resnet", "arch": arch, "n": 1, "outputs": o, "dtype": "float32",
            "image_size": args.image_size.get(arch, pure_resnet.DEFAULT_IMAGE_SIZE[arch])}
    order = []
    for impl in (SD, VP, JC, AUTO, JACREV):
      if impl in args.implementations:
        order.append((LIBRARY, "pure", impl))
      if peer_python and impl in args.peer_implementations:
        order.append((PEER, "pure", impl))
    if arch == "rn18":
      order += [(LIBRARY, "zoo", impl) for impl in args.zoo_implementations]
    for lib, model, impl in order:
      meta = dict(base, library=lib, model=model, implementation=impl)
      cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout)
      if (arch, impl) in args.skip:
        cmd = None
      elif lib == LIBRARY:
        cmd = [sys.executable, os.path.abspath(__file__), "--cell", json.dumps(cell)]
      else:
        cmd = peer_resnet.cell_command(cell, peer_python)
      jobs.append((meta, cmd))
  return jobs


def run_sweep(jobs, out_path: str, args) -> None:
  done = set()
  if args.resume:
    done = {cell_key(r) for r in common.read_jsonl(out_path) if r.get("status") == "ok"}
  elif not args.append and os.path.exists(out_path):
    os.remove(out_path)
  for i, (meta, cmd) in enumerate(jobs):
    if cell_key(meta) in done:
      continue
    rec = dict(meta)
    if cmd is None:
      rec.update(status="skipped", error="--skip")
    else:
      rec.update(common.run_cell(cmd, args.timeout, args.mem_limit_mb, cwd=REPO))
    rec.update(meta)
    common.append_jsonl(out_path, rec)
    ms = ("" if rec.get("median_s") is None else
          f" median {rec['median_s'] * 1e3:.1f} ms ({rec.get('runs')} runs) compile "
          f"{rec.get('compile_s', 0):.1f} s run peak {rec.get(PEAK, float('nan')):.0f} MB")
    chose = f" chose {rec['auto_chosen']}" if rec.get("auto_chosen") else ""
    print(f"[{i + 1}/{len(jobs)}] {meta['library']} {meta['model']} {SHORT[meta['implementation']]} "
          f"{meta['arch']} O={meta['outputs']}: {rec['status']}{ms}{chose} "
          f"(cell {rec.get('cell_wall_s', 0):.1f} s, load {rec.get('loadavg_1m')})"
          + ("" if rec["status"] == "ok" else f" — {str(rec.get('error', ''))[:300]}"),
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Markdown.

def _text(rec: dict | None, field: str, scale: float = 1.0, repeats: int = 3) -> str:
  if rec is None:
    return "—"
  st = rec.get("status")
  if st != "ok":
    return {"unavailable": "n/a", "timeout": "timeout", "oom": "OOM",
            "skipped": "skipped"}.get(st, "error")
  v = rec.get(field)
  if v is None:
    return "—"
  s = common.fmt_num(v * scale)
  if field == "median_s" and rec.get("runs", 0) < repeats:
    s += "†"
  return s


def _ratio(a, b, field) -> float | None:
  if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
    return None
  va, vb = a.get(field), b.get(field)
  return va / vb if va is not None and vb else None


def _load(rec: dict | None) -> str:
  """Mean of the 1-min load average at the cell's start and end."""
  la = (rec or {}).get("loadavg_1m")
  return f"{sum(la) / len(la):.1f}" if la else "—"


def _row(cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(records: list[dict], meta: dict) -> str:
  latest = {}
  for r in records:
    latest[cell_key(r)] = r
  recs = list(latest.values())
  cells = common.iter_unique((r["arch"], r["outputs"], r["image_size"]) for r in recs)
  cells.sort(key=lambda c: (c[0], c[1]))
  get = {cell_key(r): r for r in recs}

  def rec(lib, model, impl, c):
    return get.get((lib, model, impl, c[0], c[1], 1, c[2]))

  # Kernels whose Frobenius norm is off the cell's median by > 1e-3 (relative) are flagged ✗.
  wrong = {}
  for c in cells:
    ks = [r for r in recs if (r["arch"], r["outputs"], r["image_size"]) == c
          and r.get("status") == "ok" and r.get("kernel_norm")]
    if len(ks) >= 3:
      med = sorted(r["kernel_norm"] for r in ks)[len(ks) // 2]
      for r in ks:
        if abs(r["kernel_norm"] - med) > 1e-3 * med:
          wrong[cell_key(r)] = r["kernel_norm"] / med - 1.0

  def ms(r):
    t = _text(r, "median_s", 1e3, repeats)
    return t + " ✗" if r is not None and cell_key(r) in wrong else t

  m = meta.get("machine", {})
  repeats = meta.get("repeats", 3)
  ours_ok = [r for r in recs if r["library"] == LIBRARY and r.get("status") == "ok"]
  peers_ok = [r for r in recs if r["library"] == PEER and r.get("status") == "ok"]
  jv = sorted({r.get("jax_version") for r in ours_ok if r.get("jax_version")})
  pv = sorted({f"{r.get('library_version')} on JAX {r.get('jax_version')}" for r in peers_ok
               if r["implementation"] != JACREV})
  cmds = meta.get("commands") or [meta.get("command", "?")]
  L = ["## ResNet-18 / ResNet-50 (full NTK of one pair of images)", ""]
  L.append("Command" + ("s (in order, " if len(cmds) > 1 else " (") + "from the repository root): "
           + "; ".join(f"`{c}`" for c in cmds))
  if meta.get("git"):
    L.append("")
    L.append(f"ntk_zoo code of the last command: commit {meta['git']}.")
  L.append("")
  L.append(f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpu_model', '?')}), shared with other "
           f"jobs; {meta.get('platform', 'cpu')}; ntk_zoo on JAX {', '.join(jv) or '?'}"
           + (f"; neural-tangents {', '.join(pv)}" if pv else "") + f"; {m.get('date', '?')}.")
  L.append("")
  nparams = {(r["arch"], r["outputs"]): r.get("num_params") for r in ours_ok + peers_ok}
  sizes = ", ".join(f"{a} O={o}: {n:,}" for (a, o), n in sorted(nparams.items()) if n)
  L.append(
      "Model: `benchmarks/pure_resnet.py`, torchvision's ResNet-18 (BasicBlocks [2,2,2,2]) and "
      "ResNet-50 (v1.5 bottlenecks [3,4,6,3]), 64 filters, 7×7/2 stem + 3×3/2 max-pool, "
      "BatchNorm in inference mode (fixed statistics, scale/bias differentiated), global average "
      "pool, Dense head; a pure JAX function (`lax.conv_general_dilated`, explicit params dict) "
      "run unchanged in both venvs with bit-identical float32 parameters and inputs "
      f"(parameters: {sizes}). Inputs: x1, x2 one image each (N = 1), ResNet-18 at 32×32, "
      "ResNet-50 at 224×224. Kernel Θ(x1, x2) of shape (1, 1, O, O): "
      "`ntk_fn(f, implementation=…, trace_axes=(), vmap_axes=0)` vs. "
      "`nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=1|2|3)`, jitted. "
      "jacrev (the baseline, ours only): `jax.jit(lambda p, a, b: (jax.jacrev(f)(p, a), "
      "jax.jacrev(f)(p, b)))`, the two Jacobians without contracting them; its peer column is "
      "the same plain-JAX program run in the peer's venv (JAX 0.4.23, no neural-tangents): what "
      "the JAX/XLA version alone changes. \"zoo Flax model\": "
      "our SD on `ntk_zoo.models.resnet`'s Flax ResNet-18 loaded with the same numbers (same "
      "architecture; logits agree to 1e-7).")
  L.append("")
  L.append(
      "Each (cell, method, library) ran in a fresh subprocess, one at a time, ours then the "
      f"peer's back to back. Time: median of ≥ {repeats} warm runs after one untimed first run "
      f"(† fewer than {repeats} fitted the {meta.get('timeout', 0):.0f} s per-cell limit). "
      "Compile: `jit(...).lower().compile()` (trace + lower + compile; for auto it includes "
      "tracing all candidates). Peak MB: process peak RSS during the runs minus the RSS after "
      "imports and input creation (`run_peak_mb`; the compile-inclusive peak is `peak_mb` in the "
      "JSONL), a CPU proxy that includes the executable and the output. timeout: the cell "
      f"exceeded {meta.get('timeout', 0):.0f} s (imports + compile + runs); OOM: resident memory "
      f"passed the {meta.get('mem_limit_mb', 0):.0f} MB cap. ✗: the kernel's Frobenius norm is "
      "off the cell's median over all methods and both libraries by more than 1e-3 (a wrong "
      "result; its time is still shown).")
  L.append("")
  loads = sorted(l for r in recs for l in (r.get("loadavg_1m") or []))
  if loads:
    L.append(f"Machine load (1-min load average on {m.get('cpu_count')} CPUs at each cell's start "
             f"and end): median {loads[len(loads) // 2]:.1f}, range {loads[0]:.1f}–"
             f"{loads[-1]:.1f}. Compare ratios within a row (ours and the peer's ran back to back), "
             "not absolute times across tables.")
    L.append("")
  for note in meta.get("notes") or []:
    L.append(note)
    L.append("")

  head = ["model", "O", "method", "ours ms", "peer ms", "time ours/peer", "compile s ours / peer",
          "peak MB ours / peer", "mem ours/peer", "load ours / peer",
          "facts.md peer ms: released / same-XLA"]
  L += [_row(head), _row(["---"] * len(head))]
  summary = []
  for c in cells:
    arch, o, size = c
    label = f"{arch} {size}²"
    facts = FACTS.get((arch, o), {})
    for impl in (SD, VP, JC, AUTO, JACREV):
      a, b = rec(LIBRARY, "pure", impl, c), rec(PEER, "pure", impl, c)
      if a is None and b is None:
        continue
      name = SHORT[impl]
      if impl == AUTO and a and a.get("auto_chosen"):
        name = f"auto → {SHORT[a['auto_chosen']]}"
      if impl == JACREV:
        name = "jacrev ×2 (baseline)"
      fr, fs = facts.get("released", {}).get(impl), facts.get("same_xla", {}).get(impl)
      ftxt = "—" if fr is None and fs is None else (
          f"{common.fmt_num(fr) if fr else '—'} / {common.fmt_num(fs) if fs else '—'}")
      L.append(_row([
          label, o, name, ms(a), ms(b),
          common.fmt_num(_ratio(a, b, "median_s"), 2),
          f"{_text(a, 'compile_s')} / {_text(b, 'compile_s')}",
          f"{_text(a, PEAK)} / {_text(b, PEAK)}", common.fmt_num(_ratio(a, b, PEAK), 2),
          f"{_load(a)} / {_load(b)}", ftxt]))
    z = rec(LIBRARY, "zoo", SD, c)
    if z is not None:
      L.append(_row([label, o, "SD, zoo Flax model", ms(z), "—", "—",
                     f"{_text(z, 'compile_s')} / —", f"{_text(z, PEAK)} / —", "—",
                     f"{_load(z)} / —", "—"]))

    # Per-cell summary.
    sd, jr = rec(LIBRARY, "pure", SD, c), rec(LIBRARY, "pure", JACREV, c)
    bits = []
    r = _ratio(sd, jr, "median_s")
    if r:
      bits.append(f"our SD ÷ our jacrev = {common.fmt_num(r, 2)} (time), "
                  f"{common.fmt_num(_ratio(sd, jr, PEAK), 2)} (peak memory)")
    for impl in (SD, VP, JC):
      r = _ratio(rec(LIBRARY, "pure", impl, c), rec(PEER, "pure", impl, c), "median_s")
      if r:
        bits.append(f"{SHORT[impl]} ours/peer {common.fmt_num(r, 2)}")
    ours_best = [(rr["median_s"], SHORT[i]) for i in (SD, VP, JC)
                 if (rr := rec(LIBRARY, "pure", i, c)) and rr.get("status") == "ok"]
    peer_best = [(rr["median_s"], SHORT[i]) for i in (SD, VP, JC)
                 if (rr := rec(PEER, "pure", i, c)) and rr.get("status") == "ok"]
    if ours_best and peer_best:
      ob, pb = min(ours_best), min(peer_best)
      bits.append(f"fastest ours {ob[1]} vs fastest peer {pb[1]}: {common.fmt_num(ob[0] / pb[0], 2)}")
    au = rec(LIBRARY, "pure", AUTO, c)
    if au and au.get("auto_chosen") and ours_best:
      bits.append(f"auto chose {SHORT[au['auto_chosen']]} (fastest measured: {min(ours_best)[1]})")
    # facts.md's same-XLA peer was timed at another machine load: compare load-free ratios.
    fs, fr = facts.get("same_xla", {}), facts.get("released", {})
    est = []
    for impl in (SD, VP, JC):
      r = _ratio(rec(LIBRARY, "pure", impl, c), rec(PEER, "pure", impl, c), "median_s")
      if r and fs.get(impl) and fr.get(impl):
        est.append(f"{SHORT[impl]} {common.fmt_num(r, 2)} ÷ {common.fmt_num(fs[impl] / fr[impl], 2)}"
                   f" = **{common.fmt_num(r * fr[impl] / fs[impl], 2)}**")
    if est:
      bits.append("ours ÷ same-XLA peer, estimated as (ours ÷ released peer, here) ÷ (same-XLA ÷ "
                  "released peer, facts.md): " + ", ".join(est))
    r = _ratio(sd, jr, "median_s")
    if r and fs.get(SD) and fs.get(JACREV) and not fr.get(SD):
      bits.append(f"our SD ÷ same-XLA peer SD ≈ {common.fmt_num(r, 2)} ÷ "
                  f"{common.fmt_num(fs[SD] / fs[JACREV], 2)} = "
                  f"{common.fmt_num(r * fs[JACREV] / fs[SD], 2)} (SD ÷ jacrev, ours here vs the "
                  "same-XLA peer's in facts.md)")
    ks = [rr for rr in recs if (rr["arch"], rr["outputs"], rr["image_size"]) == c
          and rr.get("status") == "ok" and rr.get("kernel_norm")]
    good = [rr["kernel_norm"] for rr in ks if cell_key(rr) not in wrong]
    if len(good) > 1:
      txt = (f"‖Θ‖_F agrees across {len(good)} kernels to {(max(good) - min(good)) / max(good):.1e}")
      bad = [f"{'ours' if rr['library'] == LIBRARY else 'peer'} {SHORT[rr['implementation']]}"
             f"{' (zoo model)' if rr['model'] == 'zoo' else ''} "
             f"({100 * wrong[cell_key(rr)]:+.1f} %)" for rr in ks if cell_key(rr) in wrong]
      if bad:
        txt += "; **wrong kernel ✗**: " + ", ".join(bad)
      bits.append(txt)
    if bits:
      summary.append(f"- **{label} O={o}**: " + "; ".join(bits) + ".")
  L.append("")
  L += summary
  L.append("")
  L.append("Raw records (all fields: min, first run, times, XLA FLOPs/temp, auto's estimates): "
           f"`{meta.get('out_rel', 'benchmarks/out/resnet.jsonl')}` (not committed).")
  return "\n".join(L)


def write_markdown(path: str, body: str) -> None:
  """Rewrites only our section: re-reads the file right before writing (others edit it too)."""
  common.replace_between_markers(path, BEGIN, END, body)
  print(f"wrote the ResNet section of {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------

def _git_state() -> str:
  """HEAD's short hash, plus a note if ntk_zoo/ has uncommitted changes (what our cells ran)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "ntk_zoo"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + (" + uncommitted changes in ntk_zoo/" if dirty else "")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--peer-venv", default=None,
                 help="neural-tangents venv (setup_neural_tangents.sh); runs the peer side by side")
  p.add_argument("--cells", type=parse_cells, default=parse_cells(DEFAULT_CELLS),
                 help=f"comma-separated ARCH:O (default {DEFAULT_CELLS})")
  p.add_argument("--implementations", type=impl_list, default=list(OUR_IMPLS),
                 help="ours: sd,vp,jc,auto,jacrev (default all)")
  p.add_argument("--peer-implementations", type=impl_list, default=list(PEER_IMPLS),
                 help="the peer's: sd,vp,jc (default), and jacrev (plain JAX in its venv)")
  p.add_argument("--zoo-implementations", type=impl_list, default=[SD],
                 help="ours on the zoo's Flax ResNet-18 (rn18 cells; default sd; '' for none)")
  p.add_argument("--skip", type=skip_list, default=set(),
                 help="ARCH:IMPL pairs not to run (both libraries), e.g. rn50:jc,rn50:vp")
  p.add_argument("--image-size", type=lambda s: dict((k, int(v)) for k, v in
                                                     (kv.split(":") for kv in s.split(",") if kv)),
                 default={}, help="override input size, e.g. rn50:112")
  p.add_argument("--repeats", type=int, default=3, help="warm runs per cell (at least)")
  p.add_argument("--timeout", type=float, default=300.0,
                 help="seconds per cell subprocess (imports + compile + runs)")
  p.add_argument("--mem-limit-mb", type=float, default=12000.0,
                 help="kill a cell whose resident memory exceeds this (recorded as OOM)")
  p.add_argument("--out", default=os.path.join(HERE, "out", "resnet.jsonl"))
  p.add_argument("--resume", action="store_true", help="skip cells with an ok record in --out")
  p.add_argument("--append", action="store_true", help="append to --out; latest record wins")
  p.add_argument("--markdown", action="store_true", help="(re)write our section of --results-md")
  p.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
  p.add_argument("--report-only", action="store_true", help="run nothing (with --markdown)")
  p.add_argument("--note", action="append", default=None,
                 help="a paragraph for the markdown section (kept in the .meta.json)")
  p.add_argument("--cell", default=None, help=argparse.SUPPRESS)
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  if args.cell:
    run_one_cell(json.loads(args.cell))
    return

  meta_path = args.out + ".meta.json"
  old = {}
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      old = json.load(f)
  if not args.report_only:
    peer_py = None
    if args.peer_venv:
      peer_py = os.path.join(os.path.expanduser(args.peer_venv), "bin", "python")
      if not os.path.exists(peer_py):
        p.error(f"--peer-venv: {peer_py} not found; build it with setup_neural_tangents.sh")
    jobs = build_jobs(args, peer_py)
    import jax  # pylint: disable=g-import-not-at-top
    meta = {"command": shlex.join([sys.executable,
                                   os.path.relpath(os.path.abspath(__file__), REPO), *argv]),
            "machine": common.machine_info(), "platform": jax.devices()[0].platform,
            "repeats": args.repeats, "timeout": args.timeout, "mem_limit_mb": args.mem_limit_mb,
            "out_rel": os.path.relpath(os.path.abspath(args.out), REPO), "git": _git_state()}
    if (args.resume or args.append) and old:
      meta["commands"] = old.get("commands", [old.get("command")]) + [meta["command"]]
      meta["notes"] = old.get("notes")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(meta_path, "w") as f:
      json.dump(meta, f, indent=1)
    old = meta
    t0 = time.time()
    print(f"{len(jobs)} cells, one at a time, timeout {args.timeout:.0f} s each", file=sys.stderr)
    run_sweep(jobs, args.out, args)
    print(f"done in {time.time() - t0:.0f} s; wrote {args.out}", file=sys.stderr)
  if args.note is not None:
    old["notes"] = [n for n in args.note if n]
    with open(meta_path, "w") as f:
      json.dump(old, f, indent=1)
  if args.markdown:
    if not old:
      p.error(f"{meta_path} not found: run the sweep first")
    write_markdown(args.results_md, markdown(common.read_jsonl(args.out), old))


if __name__ == "__main__":
  main()
