"""Benchmarks (bench/README.md). Run from the repository root as modules,
``.venv/bin/python -m bench.NAME``: they import each other as ``bench.*`` and the test
helpers as ``tests.support.*``, with no change to ``sys.path``."""
