"""Frozen-VGG19 features for CIFAR, extracted once into a provenance-stamped HDF5 cache (stage one,
`pipeline.features`), then cheap head experiments on top (stage two, `pipeline.heads`).

Public API: `FeatureConfig`, `extract`, `find_cache`, `load_cache`, the heads `SoftmaxHead`,
`LogRegHead`, `JointSoftmax`, `PipelineError`: each imported where it is first used, so `import pipeline`
loads nothing else (the program's entry point installs its SIGTERM handler a few milliseconds in, not
after NumPy and HDF5), and reading a cache needs no Numba.
"""
import importlib

_MODULE_OF = {"PipelineError": "errors", "FeatureConfig": "features", "extract": "features",
              "find_cache": "features", "load_cache": "features", "SoftmaxHead": "heads", "LogRegHead": "heads",
              "JointSoftmax": "heads"}
__all__ = list(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
