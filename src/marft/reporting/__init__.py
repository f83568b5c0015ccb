"""Reporting: metric sinks (JSONL, TensorBoard) and transcripts."""

from marft.reporting.metrics import MetricsSink, read_metrics

__all__ = ["MetricsSink", "read_metrics"]
