"""Stage one: stream upscaled images through the frozen VGG19 once and cache the features (HDF5)."""
from .cache import load_cache
from .config import FeatureConfig
from .extract import check_cache_settings, extract, find_cache

__all__ = ["FeatureConfig", "check_cache_settings", "extract", "find_cache", "load_cache"]
