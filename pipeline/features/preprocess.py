"""Upscale RGB uint8 images with OpenCV (worker threads: cv2.resize releases the GIL, so upscaling
overlaps the model), then VGG19's own preprocessing (the notebook's steps) inside the model
(`keras_preprocessing`): the host sends uint8 pixels, a quarter of the bytes of float32, and does
no per-pixel arithmetic. `preprocess` is the same arithmetic on the host (the reference).
"""
from __future__ import annotations

import cv2
import numpy as np

INTERPOLATION = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
# Recorded in every cache: what turns pixels into the model's input.
PREPROCESSING = "cv2.resize(uint8 RGB) -> float32 -> keras.applications.vgg19.preprocess_input (caffe: BGR, mean-subtracted)"


def upscale(images, size: int, interpolation: str) -> np.ndarray:
    """A list or array of HxWx3 uint8 RGB images -> N x size x size x 3 uint8."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    flag = INTERPOLATION[interpolation]
    for i, img in enumerate(images):
        out[i] = img if img.shape[:2] == (size, size) else cv2.resize(img, (size, size), interpolation=flag)
    return out


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg19.preprocess_input (caffe mode)


def keras_preprocessing(keras, x):
    """VGG19's preprocess_input inside a model, in float32 whatever the rest computes in: pixels (uint8
    or float, RGB 0..255) -> float32 -> BGR minus the ImageNet mean, as Keras' own layers (a cast and
    a fixed 1x1 convolution with one nonzero term per output: exactly the host arithmetic)."""
    x = keras.layers.Rescaling(1.0, dtype="float32", name="vgg19_to_float")(x)
    prep = keras.layers.Conv2D(3, 1, name="vgg19_preprocess", dtype="float32", trainable=False)
    y = prep(x)
    prep.set_weights([np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3), -np.array(CAFFE_MEAN_BGR, np.float32)])
    return y


def preprocess(images, size: int, interpolation: str) -> np.ndarray:
    """RGB uint8 images of any size -> the float32 batch VGG19 expects."""
    from keras.applications.vgg19 import preprocess_input
    x = upscale(images, size, interpolation).astype(np.float32)
    return np.ascontiguousarray(preprocess_input(x))
