"""What every experiment script shares: its command line, config overrides, resumable records.

Each `experiments/<name>.py` defines `get_config(full=False)` and `run(config, out_dir)` and ends
with `_cli.main(__doc__, get_config, run)`, which gives it

    --full             the paper-sized config (`get_config(full=True)`)
    --out DIR          where records, plots and the report go (default experiments/out/<name>)
    --set KEY=VALUE    override a config field (repeatable; lists as 64,128,256)

Finished cells are appended to a JSONL file in `out_dir` (`Records`) and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `from benchmarks import ...` when run as a script.
  sys.path.insert(0, str(REPO))

from benchmarks import harness, reporting  # noqa: E402  pylint: disable=wrong-import-position


def _parse_value(text: str, old):
  """`text` as the type of the field it replaces (lists from "a,b,c")."""
  if isinstance(old, (list, tuple)):
    items = [t for t in text.replace(" ", "").split(",") if t]
    proto = old[0] if old else ""
    return type(old)(_parse_value(t, proto) for t in items)
  if isinstance(old, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"expected true/false, got {text!r}")
    return text.lower() in ("true", "1")
  if isinstance(old, (int, float)):
    return type(old)(ast.literal_eval(text))
  return text


def apply_overrides(config: ml_collections.ConfigDict,
                    pairs: Iterable[str]) -> ml_collections.ConfigDict:
  """Sets `key=value` pairs (dotted keys for nested fields) on a copy of `config`.

  Raises:
    ValueError: an unknown key, a pair without "=", or a value of the wrong type.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for pair in pairs:
    key, sep, text = pair.partition("=")
    if not sep:
      raise ValueError(f"--set {pair!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node.get(p)
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"--set {pair!r}: unknown config key {key!r}")
    if leaf not in node:
      raise ValueError(f"--set {pair!r}: unknown config key {key!r}; known: "
                       f"{', '.join(sorted(node.keys()))}")
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except (ValueError, SyntaxError, TypeError) as e:
      raise ValueError(f"--set {pair!r}: {e}") from None
  return config


def command(script: str, config: ml_collections.ConfigDict,
            get_config: Callable[[bool], ml_collections.ConfigDict]) -> str:
  """The command line that reproduces `config`: the script, --full, and a --set per change.

  `config` carries `full` and `publish` (set by `get_config` / `main`).
  """
  full = bool(config.get("full", False))
  base = get_config(full).to_dict()
  args = ["python", f"experiments/{script}.py"] + (["--full"] if full else [])
  args += ["--publish"] if config.get("publish") else []
  for k, v in sorted(config.to_dict().items()):
    if k in ("full", "publish") or base.get(k) == v:
      continue
    text = ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    args += ["--set", f"{k}={text}"]
  return shlex.join(args)


class Records:
  """Cells already finished, in `path` (JSONL, one record per line); `add` appends one."""

  def __init__(self, path: pathlib.Path, key: Callable[[dict], tuple]):
    self.path, self._key = path, key
    self.by_key = {key(r): r for r in harness.read_jsonl(str(path))}

  def get(self, key: tuple) -> dict | None:
    return self.by_key.get(key)

  def add(self, rec: dict) -> None:
    harness.append_jsonl(str(self.path), rec)
    self.by_key[self._key(rec)] = rec


def log_run(out_dir: pathlib.Path, command_line: str, load_start: str, ran: int) -> list[dict]:
  """Appends this invocation to `out_dir/runs.jsonl`; returns the ones that ran cells (+ this).

  Each entry: the command, `uptime` at its start and end, and how many cells it ran, so a
  report built from reused cells still says which commands and machine load produced them.
  """
  path = out_dir / "runs.jsonl"
  entry = {"command": command_line, "load_start": load_start, "load_end": uptime(), "ran": ran,
           "date": harness.machine_info()["date"]}
  harness.append_jsonl(str(path), entry)
  runs = harness.read_jsonl(str(path))
  return [r for r in runs[:-1] if r["ran"]] + [runs[-1]]


def write_report(out_dir: pathlib.Path, name: str, figure: pathlib.Path, report: str,
                 begin: str, end: str, publish: bool) -> None:
  """`out_dir/report.md`; with `publish`, also the committed figure and RESULTS.md section."""
  (out_dir / "report.md").write_text(report)
  if publish:
    fig_dir = REPO / "experiments" / "figures"
    fig_dir.mkdir(exist_ok=True)
    shutil.copyfile(figure, fig_dir / f"{name}.png")
    reporting.replace_between_markers(str(REPO / "experiments" / "RESULTS.md"), begin, end, report)


def runs_markdown(runs: list[dict]) -> str:
  """One line per invocation: command, date, cells run, load at start and end."""
  return "\n".join(f"- `{r['command']}` ({r['date']}; ran {r['ran']} cells): at the start "
                   f"{r['load_start']}; at the end {r['load_end']}." for r in runs)


def uptime() -> str:
  """`uptime`-style load line ("load average: 1.2, 0.9, 0.7 on 2 CPUs")."""
  la = os.getloadavg()
  return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} on {os.cpu_count()} CPUs"


def main(doc: str, get_config: Callable[[bool], ml_collections.ConfigDict],
         run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict],
         argv: list[str] | None = None, name: str | None = None) -> dict:
  """Parses the command line, runs the experiment, prints where the results went."""
  name = name or pathlib.Path(sys.argv[0]).stem
  ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--full", action="store_true", help="the paper-sized setting")
  ap.add_argument("--out", type=pathlib.Path, default=REPO / "experiments" / "out" / name,
                  help="output directory (default: experiments/out/%(prog)s's name)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a config field, e.g. --set widths=64,128 (repeatable)")
  ap.add_argument("--publish", action="store_true",
                  help="also write the committed figure and this study's RESULTS.md section")
  args = ap.parse_args(argv)
  config = get_config(args.full)
  try:
    config = apply_overrides(config, args.set)
  except ValueError as e:
    ap.error(str(e))
  config.publish = args.publish
  summary = run(config, args.out)
  print(json.dumps(summary, indent=1, default=str))
  return summary
