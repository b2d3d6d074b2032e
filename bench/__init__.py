"""Ferry's benchmark harness (issue 7): Ferry against MirrorMaker 2 and the brokers' own limit.

Run ``python -m bench.run`` (full, under 30 minutes on 2 cores) or ``python -m bench.run --quick``.
Results: one JSON file per run in bench/results/; the summary table goes into docs/performance.md.
"""
