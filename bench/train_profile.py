"""Per-op profile of one training step (issue 22): zf_jax under jax.profiler, PyTorch eager under torch.profiler.

  python -m bench.train_profile                        # zfnet64, batch 128: the top ops of both, ms per step
  python -m bench.train_profile --model zfnet --batch 32 --top 20
  XLA_FLAGS=... python -m bench.train_profile --jax_only   # the zf_jax step alone under other XLA flags
  python -m bench.train_profile --ops                  # conv4's shapes alone: formulations, flags, PyTorch

The step is benchmark 4's (`bench.train_step.setup`). zf_jax's table sums, per thunk of the compiled
step (an XLA:CPU fusion, convolution or copy), the durations the profiler recorded, and names what the
thunk computes from the compiled HLO (its root op and shape). PyTorch's is `key_averages()` by self CPU
time. Both are divided by the number of profiled steps. Prints only; bench/RESULTS.md quotes it.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench.run: torch's idle threads sleep, not spin

import jax  # noqa: E402
import torch  # noqa: E402

from bench import common, train_step  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def hlo_roots(hlo_text: str) -> dict[str, str]:
  """Instruction name -> what it computes: its opcode and shape, or for a fusion its root's.

  Args:
    hlo_text: the compiled module (`jitted.lower(...).compile().as_text()`).
  """
  instructions, roots, computation = {}, {}, None
  for line in hlo_text.splitlines():
    if (head := _COMPUTATION.match(line)) and line.rstrip().endswith("{"):
      computation = head.group(1)
      continue
    if not (m := _INSTRUCTION.match(line)):
      continue
    name, shape, opcode, rest = m.groups()
    window = re.search(r"window=\{([^}]*)\}", rest)
    summary = f"{opcode} {shape.split('{')[0]}" + (f" [{window.group(1)}]" if window else "")
    calls = _CALLS.search(rest)
    instructions[name] = (summary, calls.group(1) if opcode == "fusion" and calls else None)
    if line.lstrip().startswith("ROOT"):
      roots[computation] = name
  described = {}
  for name, (summary, called) in instructions.items():
    if called and called in roots:
      summary = f"fusion -> {instructions[roots[called]][0]}"
    described[name] = summary
  return described


def jax_profile(step: Callable[[], Any], hlo_text: str, steps: int) -> list[dict[str, Any]]:
  """Per-thunk ms per step of `step` (already compiled and warm), largest first."""
  described = hlo_roots(hlo_text)
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(step())
    [trace] = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in described:
      totals[e["name"]] += e.get("dur", 0.0) / 1e3
  return [{"op": name, "ms": ms / steps, "what": described[name]} for name, ms in totals.most_common()]


def torch_profile(step: Callable[[], Any], steps: int) -> list[dict[str, Any]]:
  """Per-op self CPU ms per step of `step` (warm), largest first."""
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(steps):
      step()
  rows = [{"op": e.key, "ms": e.self_cpu_time_total / 1e3 / steps, "what": str(e.input_shapes)[:90]}
          for e in prof.key_averages(group_by_input_shape=True)]
  return sorted(rows, key=lambda r: -r["ms"])


def print_table(title: str, rows: list[dict[str, Any]], step_ms: float, top: int) -> None:
  """The `top` largest ops, their share of the step, and what is left."""
  print(f"\n{title}: step {step_ms:.1f} ms (timed without the profiler); profiled ops sum to "
        f"{sum(r['ms'] for r in rows):.1f} ms")
  print(f"{'ms/step':>8} {'share':>6}  op  (what)")
  for r in rows[:top]:
    print(f"{r['ms']:8.1f} {r['ms'] / step_ms:6.1%}  {r['op']}  ({r['what']})")
  print(f"{sum(r['ms'] for r in rows[top:]):8.1f}         the other {max(len(rows) - top, 0)} ops")


FLAGS = ("", "--xla_cpu_use_xnnpack=false", "--xla_cpu_use_onednn=true",
         "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
         "--xla_cpu_use_thunk_runtime=false")


def conv_formulations(batch: int, size: int, cin: int, cout: int, repeats: int) -> dict[str, float]:
  """ms of one 3x3 stride-1 'SAME' convolution [batch, size, size, cin] -> cout, written several ways.

  XLA: the convolution, its kernel gradient (as jax.vjp gives it), the kernel gradient as 9 matmuls of
  shifted views and as im2col + one matmul, the forward as im2col and as shifted matmuls, and a plain
  matmul of the forward's FLOPs; PyTorch: the convolution and that matmul. All agree to 1e-5 (checked).
  """
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  dims = ("NHWC", "HWIO", "NHWC")
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, cin))
  k = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.05
  g = jax.random.normal(keys[2], (batch, size, size, cout))

  def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)

  def views(x):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3)]

  fns = {
      "forward: convolution": (jax.jit(conv), (x, k)),
      "forward: im2col + matmul": (jax.jit(lambda x, k: (jnp.concatenate(views(x), -1).reshape(-1, 9 * cin)
                                                         @ k.reshape(9 * cin, cout)).reshape(g.shape)), (x, k)),
      "forward: 9 shifted matmuls": (jax.jit(lambda x, k: sum(jnp.einsum("bhwi,io->bhwo", v, w) for v, w in
                                                              zip(views(x), k.reshape(9, cin, cout)))), (x, k)),
      "kernel gradient: jax.vjp (XLA's convolution)": (
          jax.jit(lambda x, g: jax.vjp(lambda kk: conv(x, kk), k)[1](g)[0]), (x, g)),
      "kernel gradient: 9 shifted matmuls": (jax.jit(lambda x, g: jnp.stack(
          [jnp.einsum("bhwi,bhwo->io", v, g) for v in views(x)]).reshape(3, 3, cin, cout)), (x, g)),
      "kernel gradient: im2col + matmul": (jax.jit(lambda x, g: jnp.einsum(
          "bhwi,bhwo->io", jnp.concatenate(views(x), -1), g).reshape(3, 3, cin, cout)), (x, g)),
  }
  reference = {"forward": np.asarray(fns["forward: convolution"][0](x, k)),
               "kernel gradient": np.asarray(fns["kernel gradient: jax.vjp (XLA's convolution)"][0](x, g))}
  times = {}
  for name, (fn, args) in fns.items():
    out = np.asarray(fn(*args))
    ref = reference[name.split(":")[0]]
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), name
    times[f"XLA {name}"] = _median_ms(lambda fn=fn, args=args: fn(*args), repeats)
  a, b = jnp.ones((batch * size * size, 9 * cin)), jnp.ones((9 * cin, cout))
  matmul = jax.jit(lambda a, b: a @ b)
  times["XLA matmul of the forward's FLOPs"] = _median_ms(lambda: matmul(a, b), repeats)
  tx, tw = torch.randn(batch, cin, size, size), torch.randn(cout, cin, 3, 3)
  ta, tb = torch.ones(batch * size * size, 9 * cin), torch.ones(9 * cin, cout)
  times["PyTorch forward: convolution"] = _median_ms(lambda: torch.nn.functional.conv2d(tx, tw, padding=1), repeats)
  times["PyTorch matmul of the forward's FLOPs"] = _median_ms(lambda: ta @ tb, repeats)
  return times


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
  """Median ms of `repeats` calls of `fn`, already warm (`common.timeit`)."""
  return common.timeit({"fn": fn}, repeats, warmup=0)["fn"] * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="zfnet64", choices=sorted(train_step.NUM_CLASSES))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up steps)")
  parser.add_argument("--top", type=int, default=15)
  parser.add_argument("--jax_only", action="store_true", help="skip PyTorch (e.g. to compare XLA_FLAGS)")
  parser.add_argument("--ops", action="store_true", help="conv4's and conv2's shapes alone, each XLA flag set in "
                      "its own process (conv_formulations), instead of the step's profile")
  parser.add_argument("--shape", help=argparse.SUPPRESS)  # batch,size,cin,cout: one process of --ops
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  if args.shape:
    times = conv_formulations(*map(int, args.shape.split(",")), repeats=9)
    print(json.dumps(times))
    return
  if args.ops:
    import subprocess
    import sys
    for shape in ("128,7,192,192", "128,14,48,96"):
      for flags in FLAGS:
        out = subprocess.run([sys.executable, "-m", "bench.train_profile", "--shape", shape], check=True,
                             capture_output=True, text=True, env=os.environ | {"XLA_FLAGS": flags}).stdout
        times = json.loads(out.strip().splitlines()[-1])
        print(f"\n[batch, size, cin, cout] = [{shape}], XLA_FLAGS={flags!r}; ms, median of 9")
        for name, ms in times.items():
          print(f"{ms:8.1f}  {name}")
    return
  setup = train_step.setup(args.model, args.batch)
  for _ in range(2):
    jax.block_until_ready(setup.zf_jax())
  print(f"{args.model}, batch {args.batch}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  rows = jax_profile(setup.zf_jax, setup.hlo_text(), args.steps)
  print_table("zf_jax (XLA:CPU thunks)", rows, _median_ms(setup.zf_jax, args.steps), args.top)
  if not args.jax_only:
    for _ in range(2):
      setup.eager()
    rows = torch_profile(setup.eager, args.steps)
    print_table("PyTorch eager (self CPU time)", rows, _median_ms(setup.eager, args.steps), args.top)


if __name__ == "__main__":
  main()
