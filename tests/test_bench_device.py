"""bench/gpu.sh's benchmarks (training step, projection, occlusion in float32 and bfloat16) run on CPU at tiny sizes."""
import numpy as np
import pytest

from bench import device


@pytest.mark.slow  # ~30 s on 2 idle cores (compiles 6 programs)
def test_device_benchmarks_run_on_cpu():
  rows = device.run(quick=True)
  assert [r["benchmark"] for r in rows] == ["device_train_step", "device_projection", "device_occlusion"]
  for row in rows:
    assert np.isfinite(row["zf_jax"]) and row["zf_jax"] > 0 and row["baseline"] > 0
  assert "TFLOP/s" in rows[0]["note"] and "bfloat16" in rows[0]["note"]  # FLOPs from XLA's cost analysis
  assert device.peak_flops(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()) == 989e12
