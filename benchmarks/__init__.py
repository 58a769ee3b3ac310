"""The benchmark suite: framework overhead, evaluation cost and memory, measured as ratios on this machine.

Not part of the unit tests (timings need an idle machine): run it with `python -m benchmarks`, which
writes benchmarks/RESULTS.md. tests/test_benchmarks.py runs every code path at the tiniest size.
"""
