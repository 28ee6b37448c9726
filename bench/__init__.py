"""Benchmarks of the operator against a real API server, side by side with the API server's own limit.

Run `python -m bench --help` (or `make bench`). Results: bench/results/ (JSON + Markdown), docs/developers/benchmarks.md.
Benchmarks are not tests: nothing here asserts a timing; the smoke mode only proves the harness works.
"""
