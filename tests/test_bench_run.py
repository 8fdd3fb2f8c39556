"""bench.run's results: a partial run (--only) replaces its benchmarks' rows and keeps the others with their run."""
import pytest

pytest.importorskip("torch")
from bench import run  # noqa: E402


def _row(benchmark: str, value: float) -> dict:
  return {"benchmark": benchmark, "model": "zfnet64", "metric": "img/s", "zf_jax": value, "baseline": 1.0,
          "baseline_name": "b", "ratio": value, "goal": 1.0, "goal_op": ">=", "met": value >= 1,
          "config": "c", "note": ""}


def _run(command: str, benchmarks: list[str]) -> dict:
  env = {"date": command, "cpu": "cpu", "cores": 2, "jax_devices": "cpu", "gpu": "none", "python": "3.11",
         "jax": "0", "jaxlib": "0", "optax": "0", "numpy": "0", "torch": "0", "captum": "0", "torch_threads": 2,
         "load_average": "0.1", "load_average_end": "0.2"}
  return {"environment": env, "command": command, "seconds": 60.0, "benchmarks": benchmarks}


def test_only_replaces_its_rows_and_keeps_the_others_with_their_run():
  full = run.merge({}, _run("full", ["projection", "train_step", "explorer"]),
                   [_row("projection", 2.0), _row("train_step", 0.8), _row("explorer", 1.0)])
  partial = run.merge(full, _run("only", ["train_step"]), [_row("train_step", 1.2)])
  assert [(r["benchmark"], r["zf_jax"]) for r in partial["results"]] == [
      ("projection", 2.0), ("train_step", 1.2), ("explorer", 1.0)]  # in BENCHMARKS' order
  assert [(r["command"], r["benchmarks"]) for r in partial["runs"]] == [
      ("full", ["projection", "explorer"]), ("only", ["train_step"])]
  text = run.table(partial["runs"], partial["results"])
  assert "command: `full`" in text and "rows: projection, explorer" in text and "rows: train_step" in text
  assert text.count("| train_step |") == 1


def test_a_run_that_replaces_everything_drops_the_old_run_line():
  old = {"environment": _run("old", [])["environment"], "command": "old", "seconds": 1.0,
         "results": [_row("train_step", 0.8)]}  # the one-run format written before partial runs were kept
  merged = run.merge(old, _run("new", ["train_step"]), [_row("train_step", 1.1)])
  assert [r["command"] for r in merged["runs"]] == ["new"]
  assert [r["zf_jax"] for r in merged["results"]] == [1.1]
