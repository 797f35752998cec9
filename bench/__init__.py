"""relayd's benchmark suite: run it with ``python bench/run.py --quick`` (see docs/BENCHMARKS.md)."""
