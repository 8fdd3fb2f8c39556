"""Benchmarks of zf_jax against Captum and PyTorch (run `python -m bench.run`; see bench/RESULTS.md)."""
