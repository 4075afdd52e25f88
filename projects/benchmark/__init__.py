"""The benchmark framework behind tools/benchmark.py, tools/complexity.py and
tools/plot_speed_accuracy.py (docs/benchmark.md): models by name, their timed forms, peers,
runners, the memory tracker, the complexity counter and the report renderer."""
