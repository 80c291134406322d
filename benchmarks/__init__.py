"""Benchmark harness for lukhas_gpu: datasets, baselines, metrics and the ``bench_*`` scripts."""
