"""Reader for the official CIFAR python distribution (`cifar-10-batches-py/`, `cifar-100-python/`,
a folder or its .tar.gz, read in place): pickled batches, unpickled so that they cannot run code,
and every field checked before use. What a crafted file can make the reader hold is capped: each
batch file's bytes (read at most to its cap: an 876 KB .tar.gz held a batch of 300,000 images, 1.8 GB
in memory), the operations in a pickle (a 190 KB .tar.gz held a list of 100 million labels, 1.9 GB)
and the archive headers kept (only the official files' names are kept from any number).
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import unicodedata

import numpy as np

from ..errors import PipelineError, reason
from ..text_table import escaped
from .dataset import Dataset, Split

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_LAYOUTS = {  # folder name -> (dataset, train files, test files, meta file, label key, names key)
    "cifar-10-batches-py": ("cifar10", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "batches.meta", "labels", "label_names"),
    "cifar-100-python": ("cifar100", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}
OFFICIAL_IMAGES = {"train": 50_000, "test": 10_000}     # images in one official file ("train", "test", batch 10,000)
MAX_META_BYTES = 1 << 20            # the official meta files are 158 B and 1.5 KB
MAX_PICKLE_OPS = 1_000_000          # an official batch is ~30,000 (CIFAR-100's train file ~200,000)


def max_batch_bytes(fname: str) -> int:
    """A batch file's cap: its official images' pixels plus a quarter, plus 1 MiB (labels, names)."""
    images = OFFICIAL_IMAGES.get(fname, 10_000)
    return images * 3072 * 5 // 4 + (1 << 20)


def _bytes(*args):
    """bytes() as protocol-2 pickles use it (an empty bytes object, or bytes(str, encoding)); nothing else."""
    if not args:
        return b""
    if len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        return args[0].encode("latin1")
    raise pickle.UnpicklingError("it asks for bytes() with other arguments")


def _counted(load):
    """An unpickler's opcode `load`, counting itself against MAX_PICKLE_OPS first."""
    def counted(self):
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise pickle.UnpicklingError(f"it holds more than {MAX_PICKLE_OPS:,} pickle operations")
        load(self)
    return counted


class _BatchUnpickler(pickle._Unpickler):
    """Allows only what the official CIFAR batches hold (numpy arrays, bytes), so a file cannot run code,
    and at most MAX_PICKLE_OPS operations, so a list cannot grow past ~8 MB whatever the file's size
    (Python's unpickler, as this one's pure-Python twin, caps neither; each operation is counted as the
    opcode table dispatches it, ~0.1 s for the official files)."""
    dispatch = {code: _counted(load) for code, load in pickle._Unpickler.dispatch.items()}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ops = 0

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("_codecs", "encode")}  # protocol-2 bytes written by Python 3 (as torch's weights_only allows)

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) in (("builtins", "bytes"), ("__builtin__", "bytes")):
            return _bytes
        raise pickle.UnpicklingError(f"it asks to run {module}.{name}")


def safe_unpickle(fileobj, where: str, max_bytes: int):
    """The dict a batch file holds, read whole into memory first (at most max_bytes: more is refused)."""
    data = fileobj.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PipelineError(f"{where}: refused, larger than {max_bytes:,} bytes, more than the official file can be; "
                            "use the official files")
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise PipelineError(f"{where}: refused, not a plain CIFAR batch ({e}); use the official files") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways
        raise PipelineError(f"{where}: unreadable CIFAR batch ({type(e).__name__}: {reason(e, 80)}); "
                            "re-download the official files") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a dict batch, got {type(obj).__name__}; use the official files")
    return obj


def batch_arrays(batch: dict, label_key: str, n_classes: int, where: str):
    """(N x 32 x 32 x 3 uint8 images, N int64 labels) from one batch dict, every field checked."""
    fix = "; re-download the official files"
    data, labels = batch.get(b"data"), batch.get(label_key.encode())
    if data is None or labels is None:
        missing = "data" if data is None else label_key
        raise PipelineError(f"{where}: no '{missing}' in the batch (missing or None){fix}")
    x, y = np.asarray(data), np.asarray(labels)
    if y.size == 0:
        y = y.astype(np.int64)      # an empty list of labels
    if x.dtype.kind not in "iu" or x.ndim != 2 or x.shape[1] != 3072:
        raise PipelineError(f"{where}: expected N x 3072 integer pixels, got {x.dtype} {x.shape}{fix}")
    if x.dtype != np.uint8 and x.size and (x.min() < 0 or x.max() > 255):
        raise PipelineError(f"{where}: pixel values out of 0..255 (got {x.min()}..{x.max()}){fix}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise PipelineError(f"{where}: expected a list of integer labels, got {y.dtype} {y.shape}{fix}")
    if len(y) != len(x):
        raise PipelineError(f"{where}: {len(x)} images but {len(y)} labels{fix}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise PipelineError(f"{where}: labels out of range: expected 0..{n_classes - 1}, got {y.min()}..{y.max()}{fix}")
    return x.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def _find_cifar_layout(is_file):
    """(member prefix, layout) when the official batches are there, else None."""
    for folder, layout in CIFAR_LAYOUTS.items():
        for prefix in (f"{folder}/", ""):
            if is_file(prefix + layout[3]) or is_file(prefix + layout[1][0]):
                return prefix, layout
    return None


def _own_file(root: str, member: str) -> bool:
    """Whether `member` of the folder `root` is a regular file, itself or through links that stay under
    root; PipelineError for a link out of it (a crafted folder's data_batch_1 linked to a file of the
    user's would be read as a batch), as image-folder trees refuse them."""
    path = os.path.join(root, member)
    if not os.path.isfile(path):
        return False
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise PipelineError(f"{escaped(path)}: a link out of the data_dir (to {escaped(real)}); copy what it points "
                            "to into the folder, or remove it")
    return True


def load_cifar_batches(path: str, splits) -> Dataset | None:
    """Official python batches from a folder or a .tar.gz; None when path holds something else."""
    if os.path.isdir(path):
        is_file = lambda m: _own_file(path, m)  # noqa: E731
        opener = lambda m: open(os.path.join(path, m), "rb")  # noqa: E731
    else:
        wanted = {prefix + f for folder, layout in CIFAR_LAYOUTS.items() for prefix in (f"{folder}/", "")
                  for f in (*layout[1], *layout[2], layout[3])}
        try:
            tar, members = tarfile.open(path, "r:*"), {}
            for m in tar:                # an image-folder tree's million headers are not kept: only these names
                tar.members = []
                if m.name.removeprefix("./") in wanted:
                    members[m.name.removeprefix("./")] = m
        except (tarfile.TarError, OSError, EOFError) as e:
            raise PipelineError(f"{path}: not a readable .tar.gz ({reason(e, 60)}); pass a CIFAR folder, its .tar.gz, "
                                "or an image-folder tree (or its .tar.gz)") from None
        is_file = lambda m: m in members and members[m].isfile()  # noqa: E731
        opener = lambda m: tar.extractfile(members[m])  # noqa: E731
    found = _find_cifar_layout(is_file)
    if found is None:
        return None
    prefix, (name, train_files, test_files, meta_file, label_key, names_key) = found
    class_names = CIFAR10_CLASSES if name == "cifar10" else [f"class_{i:02d}" for i in range(100)]
    if is_file(prefix + meta_file):
        with opener(prefix + meta_file) as f:
            meta = safe_unpickle(f, f"{path}:{prefix}{meta_file}", MAX_META_BYTES)
        names = meta.get(names_key.encode())
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names) or len(names) < 2:
            raise PipelineError(f"{path}:{prefix}{meta_file}: expected a list of class names under {names_key}; "
                                "re-download the official files")
        class_names = [unicodedata.normalize("NFC", n.decode(errors="replace")) for n in names]
        if not all(n.isprintable() for n in class_names):
            raise PipelineError(f"{path}:{prefix}{meta_file}: a class name holds a TAB, newline or other control "
                                "character; re-download the official files")
    ds = Dataset(name, class_names)
    for s in splits:
        xs, ys = [], []
        for fname in train_files if s == "train" else test_files:
            where = f"{path}:{prefix}{fname}"
            if not is_file(prefix + fname):
                raise PipelineError(f"{where}: missing; the {s} split needs it (or leave {s} out of splits)")
            with opener(prefix + fname) as f:
                x, y = batch_arrays(safe_unpickle(f, where, max_batch_bytes(fname)), label_key, len(class_names), where)
            xs.append(x)
            ys.append(y)
        y = np.concatenate(ys)
        if not len(y):
            raise PipelineError(f"{path}: the {s} split holds no images; use complete batch files, or leave "
                                f"{s} out of splits")
        ds.splits[s] = Split(s, y, np.arange(len(y)), images=np.ascontiguousarray(np.concatenate(xs)))
    return ds
