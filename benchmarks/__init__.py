"""The benchmark suite: ``python -m benchmarks [--quick] [NAME ...]`` runs it, ``python -m benchmarks render``
writes BENCHMARKS.md from ``benchmarks/results/*.json`` (see benchmarks/__main__.py)."""
