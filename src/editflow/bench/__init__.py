"""Evaluation: metrics (``editflow.bench.metrics``), datasets and the benchmark runner."""
