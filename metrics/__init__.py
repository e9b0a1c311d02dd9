"""Metrics: functional cores (``metrics.causal``, ``metrics.localization``,
``metrics.confusion``) and the accumulating classes the evaluator uses
(``metrics.standard``)."""

from metrics import standard  # noqa: F401,I001  (registration side effects, in column order)
from metrics import multilabel  # noqa: F401
from metrics.base import METRICS, EvalBatch, MetricSpec, PerImageMetric

__all__ = ["METRICS", "EvalBatch", "MetricSpec", "PerImageMetric"]
