"""Frozen-VGG19 features for CIFAR, extracted once into a provenance-stamped HDF5 cache (stage one,
`pipeline.features`), then cheap head experiments on top (stage two, `pipeline.heads`).

Public API: `FeatureConfig`, `extract`, `find_cache`, `load_cache`, the heads `SoftmaxHead`,
`LogRegHead`, `JointSoftmax` (imported when first used: reading a cache needs no Numba), `PipelineError`.
"""
from .errors import PipelineError
from .features import FeatureConfig, extract, find_cache, load_cache

__all__ = ["FeatureConfig", "PipelineError", "extract", "find_cache", "load_cache",
           "SoftmaxHead", "LogRegHead", "JointSoftmax"]


def __getattr__(name):
    if name in ("SoftmaxHead", "LogRegHead", "JointSoftmax"):
        from . import heads
        return getattr(heads, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
