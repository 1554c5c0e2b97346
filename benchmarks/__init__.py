"""Benchmarks: measured, written to ``benchmarks/results/`` as JSON and a readable table. Never run by
the unit tests."""
