"""Reader: where the images come from.

A source gives a `Dataset`: class names and, per split, a `Split` whose `read(start, stop)`
returns that contiguous range of images as RGB uint8 arrays (any size). Three sources:
keras.datasets (online), the official CIFAR python batches (folder or .tar.gz), and an
image-folder tree ROOT/{train,test}/CLASS/*.png (folder or .tar.gz).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field

import cv2
import numpy as np

from .config import PipelineError, reason

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_LAYOUTS = {  # folder name -> (dataset, train files, test files, meta file, label key, names key)
    "cifar-10-batches-py": ("cifar10", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "batches.meta", "labels", "label_names"),
    "cifar-100-python": ("cifar100", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
KERAS_TARBALLS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


class BadImage(Exception):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Split:
    """One split: labels and ids in memory; pixels read by range (from an array or from files)."""
    name: str
    labels: np.ndarray                 # int64, N
    ids: np.ndarray                    # int64 original index, or relative path (str)
    images: np.ndarray | None = None   # N x H x W x 3 uint8, for in-memory sources
    paths: list | None = None          # N file paths, for image folders

    def __len__(self):
        return len(self.labels)

    def read(self, start: int, stop: int):
        if self.images is not None:
            return self.images[start:stop]
        return [decode_image(p) for p in self.paths[start:stop]]

    def subset(self, idx) -> "Split":
        idx = np.asarray(idx, dtype=np.int64)
        return Split(self.name, self.labels[idx], self.ids[idx],
                     None if self.images is None else self.images[idx],
                     None if self.paths is None else [self.paths[i] for i in idx])


@dataclass
class Dataset:
    name: str                      # cifar10, cifar100, or imagefolder:<root name>
    class_names: list
    splits: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)   # bad images left out (--on-bad-image skip)


def decode_image(path: str) -> np.ndarray:
    """Read one image file as RGB uint8, whatever its mode; BadImage if it is not a whole image."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadImage(path, f"cannot read ({e.strerror})") from None
    if data.size == 0:
        raise BadImage(path, "zero-byte file")
    raw = data.tobytes()
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jpg", ".jpeg") and not raw.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise BadImage(path, "truncated JPEG (no end-of-image marker)")
    if ext == ".png" and b"IEND" not in raw[-16:]:
        raise BadImage(path, "truncated PNG (no IEND chunk)")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)  # grayscale, RGBA and palette all become 3-channel
    if img is None:
        raise BadImage(path, "not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def stratified_indices(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """The first images of each class, in proportion to class size, `limit` in all; sorted."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * limit / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: limit - quota.sum()]:
        quota[i] += 1  # largest remainders first, ties by class order: deterministic
    keep = [np.flatnonzero(labels == c)[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(keep))


# --- keras.datasets (online) ------------------------------------------------------------------
def load_keras_dataset(name: str, splits) -> Dataset:
    import keras
    try:
        if name == "cifar10":
            (xtr, ytr), (xte, yte) = keras.datasets.cifar10.load_data()
        else:
            (xtr, ytr), (xte, yte) = keras.datasets.cifar100.load_data(label_mode="fine")
    except Exception as e:  # Keras raises plain Exception on URL failures
        raise PipelineError(
            f"could not download {name} through keras.datasets ({reason(e)}); when "
            f"offline, fetch {KERAS_TARBALLS[name]} elsewhere and pass --data-dir PATH/{KERAS_TARBALLS[name]}") from None
    names = CIFAR10_CLASSES if name == "cifar10" else _cifar100_names_from_keras_cache()
    data = {"train": (xtr, ytr), "test": (xte, yte)}
    ds = Dataset(name, names)
    for s in splits:
        x, y = data[s]
        y = y.reshape(-1).astype(np.int64)
        ds.splits[s] = Split(s, y, np.arange(len(y)), images=x)
    return ds


def _cifar100_names_from_keras_cache():
    meta = os.path.join(os.path.expanduser("~"), ".keras", "datasets", "cifar-100-python", "meta")
    if os.path.exists(meta):
        with open(meta, "rb") as f:
            return [n.decode() for n in safe_unpickle(f, meta)[b"fine_label_names"]]
    return [f"class_{i:02d}" for i in range(100)]


# --- official CIFAR python batches ---------------------------------------------------------
class _BatchUnpickler(pickle.Unpickler):
    """Allows only what the official CIFAR batches hold (numpy arrays), so a file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}  # protocol-2 bytes written by Python 3 (as torch's weights_only allows)

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to run {module}.{name}")


def safe_unpickle(fileobj, where: str):
    try:
        obj = _BatchUnpickler(fileobj, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise PipelineError(f"{where}: refused, not a plain CIFAR batch ({e}); use the official files") from None
    except Exception as e:
        raise PipelineError(f"{where}: unreadable CIFAR batch ({type(e).__name__}: {e}); "
                            "re-download the official files") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a dict batch, got {type(obj).__name__}; use the official files")
    return obj


def _find_cifar_layout(is_file):
    """(member prefix, layout) when the official batches are there, else None."""
    for folder, layout in CIFAR_LAYOUTS.items():
        for prefix in (f"{folder}/", ""):
            if is_file(prefix + layout[3]) or is_file(prefix + layout[1][0]):
                return prefix, layout
    return None


def load_cifar_batches(path: str, splits) -> Dataset | None:
    """Official python batches from a folder or a .tar.gz; None when path holds something else."""
    if os.path.isdir(path):
        is_file = lambda m: os.path.isfile(os.path.join(path, m))  # noqa: E731
        opener = lambda m: open(os.path.join(path, m), "rb")  # noqa: E731
    else:
        try:
            tar = tarfile.open(path, "r:*")
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PipelineError(f"{path}: not a readable .tar.gz ({reason(e, 60)}); pass a CIFAR folder, its .tar.gz, "
                            "or an image-folder tree (or its .tar.gz)") from None
        is_file = lambda m: m in members and members[m].isfile()  # noqa: E731
        opener = lambda m: tar.extractfile(members[m])  # noqa: E731
    found = _find_cifar_layout(is_file)
    if found is None:
        return None
    prefix, (name, train_files, test_files, meta_file, label_key, names_key) = found
    if is_file(prefix + meta_file):
        with opener(prefix + meta_file) as f:
            meta = safe_unpickle(f, f"{path}:{prefix}{meta_file}")
        class_names = [n.decode() for n in meta.get(names_key.encode(), [])]
    else:
        class_names = CIFAR10_CLASSES if name == "cifar10" else [f"class_{i:02d}" for i in range(100)]
    ds = Dataset(name, class_names)
    for s in splits:
        xs, ys = [], []
        for fname in train_files if s == "train" else test_files:
            where = f"{path}:{prefix}{fname}"
            if not is_file(prefix + fname):
                raise PipelineError(f"{where}: missing; the {s} split needs it (or pass --splits without {s})")
            with opener(prefix + fname) as f:
                batch = safe_unpickle(f, where)
            try:
                x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                y = np.asarray(batch[label_key.encode()], dtype=np.int64)
            except (KeyError, ValueError) as e:
                raise PipelineError(f"{where}: not a CIFAR batch ({type(e).__name__}: {e}); use the official files") from None
            if len(y) != len(x):
                raise PipelineError(f"{where}: {len(x)} images but {len(y)} labels; re-download the file")
            if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
                raise PipelineError(f"{where}: labels out of range: expected 0..{len(class_names) - 1}, "
                                    f"got {y.min()}..{y.max()}; re-download the file")
            xs.append(x)
            ys.append(y)
        y = np.concatenate(ys)
        ds.splits[s] = Split(s, y, np.arange(len(y)), images=np.ascontiguousarray(np.concatenate(xs)))
    return ds


# --- image folders ---------------------------------------------------------------------------
def _extract_tar(path: str, sources_dir: str | None) -> str:
    """Unpack an image-folder tarball once; later runs reuse it (keyed by path, size and mtime)."""
    st = os.stat(path)
    tag = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    if sources_dir is None:
        out = tempfile.mkdtemp(prefix="pipeline-images-")
        atexit.register(shutil.rmtree, out, True)
    else:
        out = os.path.join(sources_dir, f"{os.path.basename(path).split('.')[0]}-{tag}")
        if os.path.isdir(out):
            return out
    tmp = out + f".tmp{os.getpid()}"
    try:
        with tarfile.open(path, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PipelineError(f"{path}: not a readable .tar.gz ({reason(e, 60)}); pass a CIFAR folder, its .tar.gz, "
                            "or an image-folder tree (or its .tar.gz)") from None
    return out


def load_image_folders(path: str, splits, sources_dir: str | None = None) -> Dataset:
    root = _extract_tar(path, sources_dir) if os.path.isfile(path) else path
    entries = [e for e in os.listdir(root) if not e.startswith(".")]
    if not {"train", "test"} & set(entries) and len(entries) == 1 and os.path.isdir(os.path.join(root, entries[0])):
        root = os.path.join(root, entries[0])  # a tree wrapped in one top folder, as tarballs often are
        entries = os.listdir(root)
    if not entries:
        raise PipelineError(f"--data-dir {path}: empty; expected CIFAR python batches or ROOT/{{train,test}}/CLASS/*.png")
    if not {"train", "test"} & set(entries):
        raise PipelineError(f"--data-dir {path}: holds neither CIFAR python batches nor train/ and test/ "
                            "image folders; expected ROOT/{train,test}/CLASS/*.png")
    found = {}
    for s in splits:
        sdir = os.path.join(root, s)
        if not os.path.isdir(sdir):
            raise PipelineError(f"--data-dir {path}: no '{s}' folder; add {s}/CLASS/*.png or pass --splits without {s}")
        classes = sorted(c for c in os.listdir(sdir) if os.path.isdir(os.path.join(sdir, c)))
        if not classes:
            raise PipelineError(f"{sdir}: no class folders; expected {s}/CLASS/*.png")
        found[s] = {}
        for c in classes:
            files = sorted(f for f in os.listdir(os.path.join(sdir, c)) if f.lower().endswith(IMAGE_EXTS))
            if not files:
                raise PipelineError(f"{os.path.join(sdir, c)}: empty class folder (no {', '.join(IMAGE_EXTS)} files); "
                                    "add images or remove the folder")
            found[s][c] = files
    class_names = sorted(set().union(*(set(v) for v in found.values())))
    ds = Dataset(f"imagefolder:{os.path.basename(os.path.abspath(path)).split('.')[0]}", class_names)
    for s, by_class in found.items():
        rel = [f"{s}/{c}/{f}" for c in sorted(by_class) for f in by_class[c]]
        labels = np.array([class_names.index(c) for c in sorted(by_class) for _ in by_class[c]], dtype=np.int64)
        ds.splits[s] = Split(s, labels, np.array(rel, dtype=object), paths=[os.path.join(root, r) for r in rel])
    return ds


def open_dataset(dataset: str, data_dir: str | None, splits, limit: int | None,
                 sources_dir: str | None = None) -> Dataset:
    """The boundary of stage one's reader: pick the source, select splits and the stratified limit."""
    if data_dir is None:
        ds = load_keras_dataset(dataset, splits)
    else:
        ds = load_cifar_batches(data_dir, splits) or load_image_folders(data_dir, splits, sources_dir)
    for s, split in ds.splits.items():
        ds.splits[s] = split.subset(stratified_indices(split.labels, limit))
    return ds
