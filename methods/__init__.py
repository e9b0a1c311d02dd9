"""Methods: one module per family, each registering its variants in ``METHODS``."""

from methods import posthoc  # noqa: I001,F401  (registration order = listing order)
from methods import abn  # noqa: F401
from methods import abn_multitask  # noqa: F401
from methods import abn_finetune  # noqa: F401
from methods import msabn  # noqa: F401
from methods import discattn  # noqa: F401
from methods import explainers  # noqa: F401
from methods.base import METHODS, Method, Output, register_method

__all__ = ["METHODS", "Method", "Output", "register_method"]
