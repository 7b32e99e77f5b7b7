"""Helpers the tests and the benchmarks share: test media, and real processes on free ports."""
