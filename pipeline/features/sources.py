"""Reader: where the images come from, and which of them make the dataset.

A source gives a `Dataset` (see dataset.py). Three sources: CIFAR through Keras' downloader (read
from Keras' cache with this project's own reader), the official CIFAR python batches (folder or
.tar.gz), and an image-folder tree ROOT/{train,test}/CLASS/*.png (folder or .tar.gz).
`open_dataset` is the boundary: it picks the source, the splits and the stratified limit, and
decodes every image file once, leaving out (or stopping at) bad ones, before any backbone work.
"""
from __future__ import annotations

import os

from .cifar_batches import load_cifar_batches
from ..errors import PipelineError, reason
from .config import FeatureConfig
from .dataset import Dataset, stratified_indices
from .image_folders import check_images, load_image_folders
from ..keras_env import keras_home

KERAS_TARBALLS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
KERAS_FOLDERS = {"cifar10": ("cifar-10-batches-py-target", "cifar-10-batches-py"),   # as keras.datasets unpacks them
                 "cifar100": ("cifar-100-python-target", "cifar-100-python")}
KERAS_URLS = {"cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
              "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                           "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7")}


def keras_cifar_folder(name: str) -> str:
    """Where keras.datasets keeps the unpacked official batches (`~/.keras/datasets/...`)."""
    target, folder = KERAS_FOLDERS[name]
    return os.path.join(keras_home(), "datasets", target, folder)


AS_DATA_DIR = "as --data-dir (FeatureConfig's data_dir)"     # where a user gives the tarball, both ways


def load_keras_dataset(name: str, splits) -> Dataset:
    """CIFAR as keras.datasets has it: read from Keras' cache without importing Keras; downloaded
    through Keras' own downloader (checksum-checked, as keras.datasets does) when not there yet."""
    folder = keras_cifar_folder(name)
    if not os.path.isdir(folder):
        import keras
        url, sha256 = KERAS_URLS[name]
        try:
            got = keras.utils.get_file(fname=KERAS_FOLDERS[name][0], origin=url, extract=True, file_hash=sha256)
        except Exception as e:  # noqa: BLE001 - Keras raises plain Exception on URL failures
            raise PipelineError(
                f"could not download {name} through keras.datasets ({reason(e)}); when offline, fetch "
                f"{KERAS_TARBALLS[name]} elsewhere and pass it {AS_DATA_DIR}") from None
        folder = os.path.join(got, KERAS_FOLDERS[name][1])
    ds = load_cifar_batches(folder, splits)
    if ds is None or ds.name != name:
        raise PipelineError(f"{folder}: not the official {name} batches; delete it to download them again, "
                            f"or pass {KERAS_TARBALLS[name]} {AS_DATA_DIR}")
    return ds


def open_dataset(dataset: str, data_dir: str | None, splits, limit: int | None, sources_dir: str | None = None,
                 on_bad_image: str = "fail", max_pixels: int | None = None, max_archive_bytes: int | None = None
                 ) -> Dataset:
    """The boundary of stage one's reader: pick the source, select splits and the stratified limit,
    and check every image file (bad ones stop the run, or are left out and listed with "skip")."""
    if data_dir is None:
        ds = load_keras_dataset(dataset, splits)
    else:
        ds = load_cifar_batches(data_dir, splits) or load_image_folders(data_dir, splits, sources_dir, max_pixels,
                                                                                     max_archive_bytes or FeatureConfig.max_archive_bytes)
    for s, split in ds.splits.items():
        ds.splits[s] = split.subset(stratified_indices(split.labels, limit))
    return check_images(ds, on_bad_image)
