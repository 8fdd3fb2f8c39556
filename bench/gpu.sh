#!/bin/sh
# The accelerator benchmarks (224-px training step, projection, occlusion; float32 and bfloat16, with MFU)
# on whatever device JAX finds; writes bench/results_device.json. `bench/gpu.sh --quick` checks it anywhere.
cd "$(dirname "$0")/.." && exec python -m bench.device "$@"
