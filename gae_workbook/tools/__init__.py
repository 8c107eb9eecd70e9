"""Tools: benchmarks, the GPU table, the notebook runner, the static site and the slides."""
