"""The spawn benchmark and the broker's micro-benchmark: run as ``python -m bench.run`` from the repository."""
