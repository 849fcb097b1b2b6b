"""Frozen-VGG19 features for CIFAR, extracted once into a provenance-stamped HDF5 cache,
then cheap head experiments on top. Public API: `load_cache`, `FeatureConfig`, `run_features`."""
from .cache import load_cache
from .config import FeatureConfig, PipelineError

__all__ = ["FeatureConfig", "PipelineError", "load_cache", "run_features", "find_cache"]


def run_features(cfg: FeatureConfig, quiet: bool = False) -> str:
    from .features import run_features as _run
    return _run(cfg, quiet=quiet)


def find_cache(cfg: FeatureConfig) -> str:
    """Path of the finished cache that `cfg` selects; PipelineError if it has not been built."""
    from .features import plan, is_hit
    p = plan(cfg)
    if not is_hit(p):
        raise PipelineError(f"no cache for these settings at {p.path}; build it with make features ARGS=\"...\"")
    return p.path
