"""Upscale RGB uint8 images with OpenCV and apply VGG19's own preprocessing (the notebook's steps).

Runs in worker threads: cv2.resize and numpy release the GIL, so upscaling overlaps the model.
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


def preprocess(images, size: int, interpolation: str) -> np.ndarray:
    """RGB uint8 images of any size -> the float32 batch VGG19 expects."""
    from keras.applications.vgg19 import preprocess_input
    x = upscale(images, size, interpolation).astype(np.float32)
    return np.ascontiguousarray(preprocess_input(x))
