"""Runs every benchmark in one process and rewrites the results table of bench/RESULTS.md.

  python -m bench.run            # everything (about 30 minutes on 2 idle CPU cores); rewrites the table
  python -m bench.run --quick    # tiny sizes, to check the scripts; prints, writes nothing
  python -m bench.run --only train_step   # replaces those rows only; the table keeps the others and their run's line

Every figure is a ratio against a baseline measured in the same run, on the same machine, with the
same weights: Captum 0.9 / PyTorch for projections, occlusion and training; zf_jax's own forward pass
for the projection-vs-forward and scan figures. bench/results.json keeps the raw numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make the repository root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torch's OpenMP threads spin while they wait; on a machine whose cores other jobs also use, that
# made a torch training step 30x slower (1.4 s instead of 45 ms). Waiting threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bench import (  # noqa: E402
  common,
  explorer,  # noqa: E402  (issue 21: the live explorer under a load test)
  features,  # noqa: E402  (sections 5.2-5.3: per-layer features vs forward)
  input_pipeline,
  occlusion,
  projection,
  topk_scan,
  train_step,
)
from zf_jax.files import atomic_path, save_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = {"projection": projection, "occlusion": occlusion, "topk_scan": topk_scan, "train_step": train_step,
              "input_pipeline": input_pipeline, "features": features, "explorer": explorer}
BEGIN, END = "<!-- bench:begin (written by python -m bench.run) -->", "<!-- bench:end -->"


def _number(value: float) -> str:
  return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _run_lines(run: dict[str, Any]) -> list[str]:
  env, names = run["environment"], ", ".join(run["benchmarks"])
  return [
      f"- Date: {env['date']}; command: `{run['command']}` ({run['seconds'] / 60:.1f} min in all); rows: {names}",
      f"  - Machine: {env['cpu']}, {env['cores']} cores; JAX devices: {env['jax_devices']}; GPU: {env['gpu']}",
      f"  - Versions: Python {env['python']}, jax {env['jax']} (jaxlib {env['jaxlib']}), optax {env['optax']}, "
      f"numpy {env['numpy']}, torch {env['torch']}, captum {env['captum']}; torch threads {env['torch_threads']}, "
      f"OMP_WAIT_POLICY={env.get('omp_wait_policy', os.environ.get('OMP_WAIT_POLICY'))}",
      f"  - Load average (1 / 5 / 15 min) at the start: {env['load_average']}; at the end: {env['load_average_end']} "
      "(other jobs on the machine make every figure noisy; ratios come from the same minutes)",
  ]


def table(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
  """The generated part of RESULTS.md: each run (when, where, with what, which rows), and the numbers."""
  lines = [BEGIN] + [line for run in runs for line in _run_lines(run)] + [
      "",
      "| Benchmark | Model | Setting | Metric | zf_jax | Baseline | Baseline value | Ratio | Goal | Met | Note |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    goal = "" if r["goal"] is None else f"{r['goal_op']} {r['goal']:g}"
    met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
    lines.append(f"| {r['benchmark']} | {r['model']} | {r['config']} | {r['metric']} | {_number(r['zf_jax'])} | "
                 f"{r['baseline_name']} | {_number(r['baseline'])} | {r['ratio']:.2f} | {goal} | {met} | {r['note']} |")
  lines.append(END)
  return "\n".join(lines)


def merge(previous: dict[str, Any], run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
  """results.json after `run`: its rows replace those of the benchmarks it ran; the others are kept with their run.

  Args:
    previous: the last results.json ({} when there is none; a file of one run without "runs" is read as one).
    run: {"environment", "command", "seconds", "benchmarks": names run}.
    rows: the run's rows.
  """
  runs = previous.get("runs")
  if runs is None and previous.get("results"):
    names = sorted({r["benchmark"] for r in previous["results"]}, key=list(BENCHMARKS).index)
    runs = [{k: previous[k] for k in ("environment", "command", "seconds")} | {"benchmarks": names}]
  replaced = set(run["benchmarks"])
  kept_runs = [dict(r, benchmarks=[b for b in r["benchmarks"] if b not in replaced]) for r in runs or []]
  kept_rows = [r for r in previous.get("results", []) if r["benchmark"] not in replaced]
  order = list(BENCHMARKS).index
  return {"runs": [r for r in kept_runs if r["benchmarks"]] + [run],
          "results": sorted(kept_rows + rows, key=lambda r: order(r["benchmark"]))}


def write_results(path: str, block: str) -> None:
  """Replaces the generated block of `path` (or creates the file with it), keeping the rest."""
  text = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
  if BEGIN not in text or END not in text:
    text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
  head, rest = text.split(BEGIN, 1)
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(head + block + rest.split(END, 1)[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes; print only, write nothing")
  parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
  args = parser.parse_args()
  warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
  torch.set_num_threads(os.cpu_count())
  env = common.environment() | {"torch_threads": torch.get_num_threads()}
  start = time.perf_counter()
  rows = []
  for name in args.only or BENCHMARKS:
    print(f"== {name}", flush=True)
    rows += BENCHMARKS[name].run(quick=args.quick)
  seconds = time.perf_counter() - start
  env["load_average_end"] = common.load_average()
  env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
  command = "python -m bench.run" + (" --quick" if args.quick else "") + (
      f" --only {' '.join(args.only)}" if args.only else "")
  run = {"environment": env, "command": command, "seconds": seconds, "benchmarks": list(args.only or BENCHMARKS)}
  results_path = os.path.join(HERE, "results.json")
  previous = {}
  if args.only and os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
  results = merge(previous, run, rows)
  print(table([run], rows))
  if not args.quick:
    save_json(results, results_path)
    write_results(os.path.join(HERE, "RESULTS.md"), table(results["runs"], results["results"]))


if __name__ == "__main__":
  main()
