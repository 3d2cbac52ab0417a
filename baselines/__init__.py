"""Comparator methods for the benchmark harness, one module per method."""
