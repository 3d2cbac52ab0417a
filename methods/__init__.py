"""Proposed methods for the benchmark harness (ESCCS, ...), one module per method."""
