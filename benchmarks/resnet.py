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

Timing/memory: `harness.time_fn` (compile separately; median of ≥ `--repeats` warm runs; peak RSS
during the runs) inside `harness.run_cell` (per-cell timeout and memory cap). Results: the
`<!-- resnet:begin/end -->` section of RESULTS.md; raw records `benchmarks/out/resnet.jsonl`.
"""

from __future__ import annotations

import time

_PROC_T0 = time.time()

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import peer_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import pure_resnet  # pylint: disable=g-import-not-at-top,wrong-import-position
import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position

OURS, PEER = methods.OURS, methods.PEER
PEAK = "run_peak_mb"
BEGIN, END = "<!-- resnet:begin -->", "<!-- resnet:end -->"

SD, VP, JC, AUTO, JACREV = methods.SD, methods.VP, methods.JC, methods.AUTO, methods.JACREV
OUR_IMPLS = (SD, VP, JC, AUTO, JACREV)
PEER_IMPLS = (SD, VP, JC)
SHORT = methods.SHORT
impl_list = methods.impl_parser(OUR_IMPLS)
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
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    info = harness.cell_info(harness.package_version("ntk_zoo"))
    f, params = _our_model(cell)
    info["num_params"] = pure_resnet.num_params(params)
    x1, x2 = (jnp.asarray(x) for x in pure_resnet.inputs(cell["n"], cell["image_size"]))
    budget = cell["timeout_s"] - (time.time() - _PROC_T0) - 5.0
    impl = cell["implementation"]
    if impl == JACREV:
      info.update(harness.time_jacobians(f, params, x1, x2, cell["repeats"], budget))
      return info
    from ntk_zoo.ntk import ntk_fn  # pylint: disable=g-import-not-at-top
    kernel = ntk_fn(f, implementation=impl, trace_axes=(), vmap_axes=0)
    info.update(harness.time_fn(lambda a, b, p: kernel(a, b, p), x1, x2, params,
                                repeats=cell["repeats"], time_budget_s=budget))
    if impl == AUTO and kernel.decisions:
      d = next(iter(kernel.decisions.values()))
      info["auto_chosen"] = d.chosen
      info["auto_estimates"] = {k: {"flops": v.flops, "bytes": v.bytes, "cost": v.cost}
                                for k, v in d.estimates.items()}
    return info

  harness.cell_main(measure, meta)


# ---------------------------------------------------------------------------------------------
# The sweep.

cell_key = harness.record_key("library", "model", "implementation", "arch", "outputs", "n",
                              "image_size")


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


def skip_list(s: str) -> set[tuple[str, str]]:
  out = set()
  for v in s.replace(" ", "").split(","):
    if v:
      arch, _, impl = v.partition(":")
      out.add((arch, methods.canonical(impl)))
  return out


def build_jobs(args, peer_python: str | None) -> list[tuple[dict, list[str] | None]]:
  """(meta, cmd) in run order; cmd None for a cell skipped by --skip (recorded as skipped)."""
  jobs = []
  for arch, o in args.cells:
    base = {"benchmark": "resnet", "arch": arch, "n": 1, "outputs": o, "dtype": "float32",
            "image_size": args.image_size.get(arch, pure_resnet.DEFAULT_IMAGE_SIZE[arch])}
    order = []
    for impl in OUR_IMPLS:
      if impl in args.implementations:
        order.append((OURS, "pure", impl))
      if peer_python and impl in args.peer_implementations:
        order.append((PEER, "pure", impl))
    if arch == "rn18":
      order += [(OURS, "zoo", impl) for impl in args.zoo_implementations]
    for lib, model, impl in order:
      meta = dict(base, library=lib, model=model, implementation=impl)
      cell = dict(meta, repeats=args.repeats, timeout_s=args.timeout)
      if (arch, impl) in args.skip:
        cmd = None
      elif lib == OURS:
        cmd = harness.cell_command(__file__, cell)
      else:
        cmd = harness.cell_command(peer_resnet.__file__, cell, peer_python)
      jobs.append((meta, cmd))
  return jobs


def describe(rec: dict) -> str:
  """One line of the sweep's log for the cell's record."""
  ms = ("" if rec.get("median_s") is None else
        f" median {rec['median_s'] * 1e3:.1f} ms ({rec.get('runs')} runs) compile "
        f"{rec.get('compile_s', 0):.1f} s run peak {rec.get(PEAK, float('nan')):.0f} MB")
  chose = f" chose {rec['auto_chosen']}" if rec.get("auto_chosen") else ""
  return (f"{rec['library']} {rec['model']} {SHORT[rec['implementation']]} {rec['arch']} "
          f"O={rec['outputs']}: {rec['status']}{ms}{chose} "
          f"(cell {rec.get('cell_wall_s', 0):.1f} s, load {rec.get('loadavg_1m')})"
          + ("" if rec["status"] == "ok" else f" — {str(rec.get('error', ''))[:300]}"))


# ---------------------------------------------------------------------------------------------
# Markdown.

HEAD = ["model", "O", "method", "ours ms", "peer ms", "time ours/peer", "compile s ours / peer",
        "peak MB ours / peer", "mem ours/peer", "load ours / peer",
        "facts.md peer ms: released / same-XLA"]


def _load(rec: dict | None) -> str:
  """Mean of the 1-min load average at the cell's start and end."""
  la = (rec or {}).get("loadavg_1m")
  return f"{sum(la) / len(la):.1f}" if la else "—"


def _kernels(recs: list[dict], c: tuple) -> list[dict]:
  """The finished records of cell `c` = (arch, outputs, image_size) that computed a kernel."""
  return [r for r in recs if (r["arch"], r["outputs"], r["image_size"]) == c
          and r.get("status") == "ok" and r.get("kernel_norm")]


class _Records:
  """A sweep's latest records by cell; kernels off their cell's median norm by > 1e-3 are wrong."""

  def __init__(self, recs: list[dict], repeats: int):
    self.recs, self.repeats = recs, repeats
    self._by_key = {cell_key(r): r for r in recs}
    self.wrong: dict[tuple, float] = {}  # cell_key -> relative error of the norm.
    for c in {(r["arch"], r["outputs"], r["image_size"]) for r in recs}:
      ks = _kernels(recs, c)
      if len(ks) >= 3:
        med = sorted(r["kernel_norm"] for r in ks)[len(ks) // 2]
        self.wrong.update({cell_key(r): r["kernel_norm"] / med - 1.0 for r in ks
                           if abs(r["kernel_norm"] - med) > 1e-3 * med})

  def get(self, lib: str, model: str, impl: str, c: tuple) -> dict | None:
    return self._by_key.get((lib, model, impl, c[0], c[1], 1, c[2]))

  def ms(self, r: dict | None) -> str:
    t = reporting.cell_text(r, "median_s", 1e3, self.repeats)
    return t + " ✗" if r is not None and cell_key(r) in self.wrong else t


def _method(impl: str, rec: dict | None) -> str:
  if impl == AUTO and rec and rec.get("auto_chosen"):
    return f"auto → {SHORT[rec['auto_chosen']]}"
  return "jacrev ×2 (baseline)" if impl == JACREV else SHORT[impl]


def _rows(t: _Records, c: tuple) -> list[list]:
  """Ours vs the peer per method, then ours on the zoo's Flax model, for cell `c`."""
  arch, o, size = c
  label = f"{arch} {size}²"
  facts = FACTS.get((arch, o), {})
  rows = []
  for impl in OUR_IMPLS:
    a, b = t.get(OURS, "pure", impl, c), t.get(PEER, "pure", impl, c)
    if a is None and b is None:
      continue
    fr, fs = facts.get("released", {}).get(impl), facts.get("same_xla", {}).get(impl)
    ftxt = "—" if fr is None and fs is None else (
        f"{reporting.fmt_num(fr) if fr else '—'} / {reporting.fmt_num(fs) if fs else '—'}")
    rows.append([
        label, o, _method(impl, a), t.ms(a), t.ms(b),
        reporting.fmt_num(reporting.ratio(a, b, "median_s"), 2),
        f"{reporting.cell_text(a, 'compile_s')} / {reporting.cell_text(b, 'compile_s')}",
        f"{reporting.cell_text(a, PEAK)} / {reporting.cell_text(b, PEAK)}",
        reporting.fmt_num(reporting.ratio(a, b, PEAK), 2), f"{_load(a)} / {_load(b)}", ftxt])
  z = t.get(OURS, "zoo", SD, c)
  if z is not None:
    rows.append([label, o, "SD, zoo Flax model", t.ms(z), "—", "—",
                 f"{reporting.cell_text(z, 'compile_s')} / —",
                 f"{reporting.cell_text(z, PEAK)} / —", "—", f"{_load(z)} / —", "—"])
  return rows


def _vs_facts(t: _Records, c: tuple) -> list[str]:
  """Ours vs facts.md's same-XLA peer, timed at another machine load: load-free ratios."""
  facts = FACTS.get((c[0], c[1]), {})
  fs, fr = facts.get("same_xla", {}), facts.get("released", {})
  bits, est = [], []
  for impl in (SD, VP, JC):
    r = reporting.ratio(t.get(OURS, "pure", impl, c), t.get(PEER, "pure", impl, c), "median_s")
    if r and fs.get(impl) and fr.get(impl):
      est.append(f"{SHORT[impl]} {reporting.fmt_num(r, 2)} ÷ "
                 f"{reporting.fmt_num(fs[impl] / fr[impl], 2)} = "
                 f"**{reporting.fmt_num(r * fr[impl] / fs[impl], 2)}**")
  if est:
    bits.append("ours ÷ same-XLA peer, estimated as (ours ÷ released peer, here) ÷ (same-XLA ÷ "
                "released peer, facts.md): " + ", ".join(est))
  r = reporting.ratio(t.get(OURS, "pure", SD, c), t.get(OURS, "pure", JACREV, c), "median_s")
  if r and fs.get(SD) and fs.get(JACREV) and not fr.get(SD):
    bits.append(f"our SD ÷ same-XLA peer SD ≈ {reporting.fmt_num(r, 2)} ÷ "
                f"{reporting.fmt_num(fs[SD] / fs[JACREV], 2)} = "
                f"{reporting.fmt_num(r * fs[JACREV] / fs[SD], 2)} (SD ÷ jacrev, ours here vs the "
                "same-XLA peer's in facts.md)")
  return bits


def _agreement(t: _Records, c: tuple) -> list[str]:
  ks = _kernels(t.recs, c)
  good = [r["kernel_norm"] for r in ks if cell_key(r) not in t.wrong]
  if len(good) <= 1:
    return []
  txt = f"‖Θ‖_F agrees across {len(good)} kernels to {(max(good) - min(good)) / max(good):.1e}"
  bad = [f"{'ours' if r['library'] == OURS else 'peer'} {SHORT[r['implementation']]}"
         f"{' (zoo model)' if r['model'] == 'zoo' else ''} "
         f"({100 * t.wrong[cell_key(r)]:+.1f} %)" for r in ks if cell_key(r) in t.wrong]
  return [txt + ("; **wrong kernel ✗**: " + ", ".join(bad) if bad else "")]


def _summary(t: _Records, c: tuple) -> str | None:
  """One line for cell `c`: SD vs jacrev, ours vs the peer, what auto chose, the agreement."""
  sd, jr = t.get(OURS, "pure", SD, c), t.get(OURS, "pure", JACREV, c)
  bits = []
  r = reporting.ratio(sd, jr, "median_s")
  if r:
    bits.append(f"our SD ÷ our jacrev = {reporting.fmt_num(r, 2)} (time), "
                f"{reporting.fmt_num(reporting.ratio(sd, jr, PEAK), 2)} (peak memory)")
  for impl in (SD, VP, JC):
    r = reporting.ratio(t.get(OURS, "pure", impl, c), t.get(PEER, "pure", impl, c), "median_s")
    if r:
      bits.append(f"{SHORT[impl]} ours/peer {reporting.fmt_num(r, 2)}")
  best = {lib: [(rr["median_s"], SHORT[i]) for i in (SD, VP, JC)
                if (rr := t.get(lib, "pure", i, c)) and rr.get("status") == "ok"]
          for lib in (OURS, PEER)}
  if best[OURS] and best[PEER]:
    ob, pb = min(best[OURS]), min(best[PEER])
    bits.append(f"fastest ours {ob[1]} vs fastest peer {pb[1]}: "
                f"{reporting.fmt_num(ob[0] / pb[0], 2)}")
  au = t.get(OURS, "pure", AUTO, c)
  if au and au.get("auto_chosen") and best[OURS]:
    bits.append(f"auto chose {SHORT[au['auto_chosen']]} (fastest measured: {min(best[OURS])[1]})")
  bits += _vs_facts(t, c) + _agreement(t, c)
  return f"- **{c[0]} {c[2]}² O={c[1]}**: " + "; ".join(bits) + "." if bits else None


def _intro(recs: list[dict], meta: dict) -> list[str]:
  """Commands, machine, model, what was measured, the machine load, notes."""
  ours_ok = [r for r in recs if r["library"] == OURS and r.get("status") == "ok"]
  peers_ok = [r for r in recs if r["library"] == PEER and r.get("status") == "ok"]
  lines = reporting.header(
      "## ResNet-18 / ResNet-50 (full NTK of one pair of images)", meta,
      reporting.jax_versions(ours_ok),
      reporting.peer_versions(r for r in peers_ok if r["implementation"] != JACREV))
  repeats = meta.get("repeats", 3)
  nparams = {(r["arch"], r["outputs"]): r.get("num_params") for r in ours_ok + peers_ok}
  sizes = ", ".join(f"{a} O={o}: {n:,}" for (a, o), n in sorted(nparams.items()) if n)
  lines.append(
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
  lines.append("")
  lines.append(
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
  lines.append("")
  load = reporting.load_range(recs)
  if load:
    lines += [f"Machine load (1-min load average on {meta.get('machine', {}).get('cpu_count')} "
              f"CPUs at each cell's start and end): {load}. Compare ratios within a row (ours and "
              "the peer's ran back to back), not absolute times across tables.", ""]
  return lines + reporting.notes(meta)


def markdown(records: list[dict], meta: dict) -> str:
  recs = reporting.latest(records, cell_key)
  cells = reporting.iter_unique((r["arch"], r["outputs"], r["image_size"]) for r in recs)
  cells.sort(key=lambda c: (c[0], c[1]))
  t = _Records(recs, meta.get("repeats", 3))
  lines = _intro(recs, meta) + reporting.table(HEAD, [row for c in cells for row in _rows(t, c)])
  lines += ["", *filter(None, (_summary(t, c) for c in cells)), "",
            "Raw records (all fields: min, first run, times, XLA FLOPs/temp, auto's estimates): "
            f"`{meta.get('out_rel', 'benchmarks/out/resnet.jsonl')}` (not committed)."]
  return "\n".join(lines)


def write_markdown(path: str, body: str) -> None:
  """Rewrites only our section: re-reads the file right before writing (others edit it too)."""
  reporting.replace_between_markers(path, BEGIN, END, body)
  print(f"wrote the ResNet section of {path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------

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
  p.add_argument("--out", default=os.path.join(harness.BENCHMARKS, "out", "resnet.jsonl"))
  p.add_argument("--resume", action="store_true", help="skip cells with an ok record in --out")
  p.add_argument("--append", action="store_true", help="append to --out; latest record wins")
  p.add_argument("--markdown", action="store_true", help="(re)write our section of --results-md")
  p.add_argument("--results-md", default=os.path.join(harness.BENCHMARKS, "RESULTS.md"))
  p.add_argument("--report-only", action="store_true", help="run nothing (with --markdown)")
  harness.add_note_arg(p)
  argv = sys.argv[1:] if argv is None else argv
  args = p.parse_args(argv)
  meta_path = args.out + ".meta.json"
  old = harness.read_meta(meta_path)
  if not args.report_only:
    jobs = build_jobs(args, harness.peer_python(p, args.peer_venv))
    meta = harness.sweep_meta(__file__, argv, args, git=True)
    if (args.resume or args.append) and old:
      harness.chain_commands(meta, old)
      meta["notes"] = old.get("notes")
    harness.write_meta(meta_path, meta)
    old = meta
    t0 = time.time()
    print(f"{len(jobs)} cells, one at a time, timeout {args.timeout:.0f} s each", file=sys.stderr)
    harness.run_sweep(jobs, args.out, args.timeout, args.mem_limit_mb, key=cell_key,
                      describe=describe, resume=args.resume, append=args.append, cwd=harness.REPO)
    print(f"done in {time.time() - t0:.0f} s; wrote {args.out}", file=sys.stderr)
  harness.save_notes(meta_path, old, args.note)
  if args.markdown:
    if not old:
      p.error(f"{meta_path} not found: run the sweep first")
    write_markdown(args.results_md, markdown(harness.read_jsonl(args.out), old))


if __name__ == "__main__":
  harness.script_main(main, run_one_cell)
