"""The one Keras layer of this project's own in a saved head: the normalize step (normalize.py) as
`BlockNormalization`, written with keras.ops so it runs on every backend. Registered as
"pipeline>BlockNormalization": `import pipeline.heads.layers` before `keras.saving.load_model` of a
head saved with --normalize (this project's own readers build it from numbers, keras_file.head_model).
"""
from __future__ import annotations

import keras
from keras import ops

from .normalize import EPS


@keras.saving.register_keras_serializable(package="pipeline")
class BlockNormalization(keras.layers.Layer):
    """Each block of `blocks` (widths) of the last axis scaled to unit L2 norm; mode "sqrt-l2": after
    a signed square root."""

    def __init__(self, blocks, mode="l2", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("l2", "sqrt-l2"):
            raise ValueError(f"mode: expected l2 or sqrt-l2, got {mode!r}")
        self.blocks, self.mode = [int(b) for b in blocks], mode

    def call(self, x):
        if self.mode == "sqrt-l2":
            x = ops.sign(x) * ops.sqrt(ops.abs(x))
        parts, start = [], 0
        for width in self.blocks:
            part = x[:, start:start + width]
            parts.append(part / ops.maximum(ops.sqrt(ops.sum(part * part, axis=-1, keepdims=True)), EPS))
            start += width
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "blocks": self.blocks, "mode": self.mode}
