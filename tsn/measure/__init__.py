"""Measurement: throughput benchmarks of loaders, models and deployed files, and memory soaks."""
