"""Benchmark harness: the proxy against direct calls to a fake upstream, measured in the same run."""
