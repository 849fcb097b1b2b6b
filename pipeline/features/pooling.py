"""Which VGG19 layers become the features, and how a conv layer's H x W x C map becomes a vector.

A layer spec is a comma list of `layer[:pooling]`, e.g. `block5_pool` or
`block4_pool:avg2x2,block5_pool:flatten`; the features are the pooled layers concatenated in that
order, all from one forward pass. Poolings use Keras' vocabulary (`pooling="avg"|"max"` as in
keras.applications; flatten as the notebook did) plus avg2x2, the mean of each quadrant (a 2 x 2
spatial pyramid level: where in the image a feature fired, at 4x the channels of avg):

    flatten  H*W*C     avg  C     max  C     avg2x2  4*C (quadrants: top-left, top-right, bottom-left, bottom-right)

They are built from Keras' own layers (`keras_parts`, `keras_pool`) and run on the device, in float32,
inside the model: stage one's mapper and predict's end-to-end model pool the same way, only the pooled
features cross back to the host (on a GPU the raw maps were 4x the bytes, and pooling them with NumPy
on the host took longer than the forward pass), and an exported model holds no custom code.
"""
from __future__ import annotations

from ..errors import SettingError

CONV_LAYERS = ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool")
DENSE_LAYERS = ("fc1", "fc2")
POOLINGS = ("flatten", "avg", "max", "avg2x2")
OWNER = "FeatureConfig"     # whose settings a bad spec is named after
SIZE_LEVEL = {f"block{i}_pool": 2 ** i for i in range(1, 6)}     # the map is image_size // this wide


def parse_layers(spec: str, default_pooling: str) -> list[tuple[str, str | None]]:
    """[(layer, pooling)] from a spec (pooling None for fc1/fc2); SettingError naming what is wrong."""
    if default_pooling not in POOLINGS:
        raise SettingError("pooling", f"expected one of {', '.join(POOLINGS)}, got {default_pooling!r}", OWNER)
    out = []
    for item in str(spec).split(","):
        name, _, pooling = item.strip().partition(":")
        if name in DENSE_LAYERS and not pooling:
            out.append((name, None))
        elif name in CONV_LAYERS:
            pooling = pooling or default_pooling
            if pooling not in POOLINGS:
                raise SettingError("layer", f"{item.strip()}: pooling expected one of {', '.join(POOLINGS)}, got "
                                   f"{pooling!r}", OWNER)
            out.append((name, pooling))
        else:
            raise SettingError("layer", f"expected a comma list of {', '.join(DENSE_LAYERS + CONV_LAYERS)} (conv "
                               f"layers may add :{'|'.join(POOLINGS)}), got {item.strip()!r}", OWNER)
    if len(set(out)) != len(out):
        raise SettingError("layer", f"{spec}: names a layer with the same pooling twice; list each once", OWNER)
    return out


def canonical(layers: list) -> str:
    """The spec with every pooling written out (what the key holds)."""
    return ",".join(name if pooling is None else f"{name}:{pooling}" for name, pooling in layers)


def slug(layers: list) -> str:
    """A file-name part: block4_pool-avg2x2+block5_pool (flatten and fc layers without a suffix)."""
    return "+".join(name if pooling in (None, "flatten") else f"{name}-{pooling}" for name, pooling in layers)


def needs_top(layers: list) -> bool:
    return any(pooling is None for _, pooling in layers)


def _quadrants(h: int, w: int):
    return [(slice(0, h // 2), slice(0, w // 2)), (slice(0, h // 2), slice(w // 2, w)),
            (slice(h // 2, h), slice(0, w // 2)), (slice(h // 2, h), slice(w // 2, w))]


def part_name(name: str, pooling: str | None) -> str:
    """One (layer, pooling) of a spec as the spec writes it: the name of its output (keras_parts)."""
    return name if pooling is None else f"{name}:{pooling}"


def keras_parts(keras, tensors: dict, layers: list) -> dict:
    """{part_name: N x d float32 tensor} for each (layer, pooling) of `layers`, from Keras tensors
    ({layer name: N x H x W x C or N x C}), built from Keras' own layers: the maps are cast to float32
    before they are pooled, whatever dtype they were computed in."""
    L, parts = keras.layers, {}
    for name, pooling in layers:
        x, tag = tensors[name], f"{name}_{pooling or 'dense'}"
        if pooling is None:
            y = L.Activation("linear", dtype="float32", name=f"{tag}_float32")(x)
        elif pooling == "flatten":
            y = L.Flatten(dtype="float32", name=tag)(x)
        elif pooling == "avg":
            y = L.GlobalAveragePooling2D(dtype="float32", name=tag)(x)
        elif pooling == "max":
            y = L.GlobalMaxPooling2D(dtype="float32", name=tag)(x)
        else:
            h, w, quadrants = x.shape[1], x.shape[2], []
            for q, (r, c) in enumerate(_quadrants(h, w)):
                crop = L.Cropping2D(((r.start, h - r.stop), (c.start, w - c.stop)), dtype="float32", name=f"{tag}_q{q}_crop")(x)
                quadrants.append(L.GlobalAveragePooling2D(dtype="float32", name=f"{tag}_q{q}")(crop))
            y = L.Concatenate(dtype="float32", name=tag)(quadrants)
        parts[part_name(name, pooling)] = y
    return parts


def keras_pool(keras, tensors: dict, layers: list):
    """The features: `layers`' parts (keras_parts) concatenated in the spec's order."""
    parts = list(keras_parts(keras, tensors, layers).values())
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(dtype="float32", name="features")(parts)


def feature_dim(layers: list, image_size: int) -> int:
    """Width of the pooled features at this image size (VGG19: 64..512 channels, 4096 for fc1/fc2)."""
    channels = {"block1_pool": 64, "block2_pool": 128, "block3_pool": 256, "block4_pool": 512, "block5_pool": 512}
    total = 0
    for name, pooling in layers:
        if pooling is None:
            total += 4096
            continue
        side, c = image_size // SIZE_LEVEL[name], channels[name]
        total += {"flatten": side * side * c, "avg": c, "max": c, "avg2x2": 4 * c}[pooling]
    return total
