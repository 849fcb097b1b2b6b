"""Where Keras keeps its files and which backend it will use, read the way Keras reads them,
without importing Keras (a cache hit never pays for loading a deep-learning backend)."""
from __future__ import annotations

import json
import os


def keras_home() -> str:
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))


def keras_backend_name() -> str:
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        with open(os.path.join(keras_home(), "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError, RecursionError):
        return "tensorflow"
