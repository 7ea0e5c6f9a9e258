"""Benchmarks of jax_flashllm: `python -m benchmarks.spmm` (kernel) and `python -m benchmarks.e2e` (OPT decode)."""
