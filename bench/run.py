"""Runs every benchmark in one process and rewrites the results table of bench/RESULTS.md.

  python -m bench.run            # everything (under 10 minutes on 2 CPU cores); rewrites the table
  python -m bench.run --quick    # tiny sizes, to check the scripts; prints, writes nothing

Every figure is a ratio against a baseline measured in the same run, on the same machine, with the
same weights: Captum 0.9 / PyTorch for projections, occlusion and training; zf_jax's own forward pass
for the projection-vs-forward and scan figures. bench/results.json keeps the raw numbers.
"""
from __future__ import annotations

import argparse
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


def table(env: dict[str, Any], rows: list[dict[str, Any]], command: str, seconds: float) -> str:
  """The generated part of RESULTS.md: when, where, with what, and the numbers."""
  lines = [
      BEGIN,
      f"- Date: {env['date']}; command: `{command}` ({seconds / 60:.1f} min in all)",
      f"- Machine: {env['cpu']}, {env['cores']} cores; JAX devices: {env['jax_devices']}; GPU: {env['gpu']}",
      f"- Versions: Python {env['python']}, jax {env['jax']} (jaxlib {env['jaxlib']}), optax {env['optax']}, "
      f"numpy {env['numpy']}, torch {env['torch']}, captum {env['captum']}; torch threads {env['torch_threads']}, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
      f"- Load average (1 / 5 / 15 min) at the start: {env['load_average']}; at the end: {env['load_average_end']} "
      "(other jobs on the machine make every figure noisy; ratios come from the same minutes)",
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
  command = "python -m bench.run" + (" --quick" if args.quick else "") + (
      f" --only {' '.join(args.only)}" if args.only else "")
  block = table(env, rows, command, seconds)
  print(block)
  if not args.quick:
    save_json({"environment": env, "command": command, "seconds": seconds, "results": rows},
              os.path.join(HERE, "results.json"))
    write_results(os.path.join(HERE, "RESULTS.md"), block)


if __name__ == "__main__":
  main()
