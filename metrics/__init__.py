"""Metrics: functional cores (``metrics.causal``, ``metrics.localization``,
``metrics.confusion``) and the accumulating classes the evaluator uses
(``metrics.standard``)."""

from metrics import standard  # noqa: F401  (registration side effects)
from metrics import multilabel  # noqa: F401,I001
from metrics.base import METRICS, EvalBatch, MetricSpec, PerImageMetric

__all__ = ["METRICS", "EvalBatch", "MetricSpec", "PerImageMetric"]
