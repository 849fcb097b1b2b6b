"""The heads' first step: each layer block of a feature vector (block4 quadrants, block4 max,
block5 flattened, ...; at each image size of a several-size cache) scaled to unit L2 norm ("l2"), after a signed square root ("sqrt-l2"), or
left as it is ("none"): blocks of very different widths and scales then weigh alike before the
standardisation. The blocks come from the cache's layer list; the same step is a Keras layer in the
saved head (layers.BlockNormalization), so predict and an exported model apply it. The heads apply
it block by block of rows (linear.float32_blocks), never to a whole cache at once.
"""
from __future__ import annotations

import numpy as np

from ..errors import PipelineError
from ..features.config import split_sizes
from ..features.pooling import feature_dim, parse_layers

EPS = 1e-12          # a block that is all zeros stays zeros (its norm is floored at EPS)


def blocks_of(provenance: dict, dim: int) -> list[int]:
    """The widths of the layer blocks of a cache's `dim` features, from its layer list and image size;
    one block of `dim` when they cannot be told (a synthetic cache, or widths that do not add up)."""
    try:
        settings = provenance["settings"]
        layers, sizes = parse_layers(settings["layer"], "flatten"), split_sizes(settings["image_size"])
        widths = [feature_dim([layer], size) for size in sizes for layer in layers]   # size after size
    except (KeyError, TypeError, ValueError, PipelineError):      # not a layer list
        return [dim]
    return widths if sum(widths) == dim and all(w > 0 for w in widths) else [dim]


def transform(x: np.ndarray, blocks, mode: str) -> np.ndarray:
    """float32 rows x, normalised in place and returned (the reference the Keras layer is tested against)."""
    if mode == "none":
        return x
    if mode == "sqrt-l2":
        np.copysign(np.sqrt(np.abs(x)), x, out=x)
    start = 0
    for width in blocks:
        part = x[:, start:start + width]
        part /= np.maximum(np.sqrt(np.einsum("ij,ij->i", part, part, dtype=np.float64)), EPS)[:, None].astype(np.float32)
        start += width
    return x


def check_blocks(blocks, dim: int) -> list[int]:
    """blocks as a list of positive ints adding up to dim; ValueError otherwise."""
    if blocks is None:
        return [dim]
    out = [int(b) for b in blocks]
    if any(b <= 0 or b != blk for b, blk in zip(out, blocks)) or sum(out) != dim:
        raise ValueError(f"blocks {list(blocks)[:8]}: expected positive widths adding up to {dim} features")
    return out
