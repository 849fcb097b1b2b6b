"""Reader for image-folder trees ROOT/{train,test}/CLASS/*.png (a folder, or a .tar.gz of one).

A tarball is unpacked once into `<cache-dir>/sources/`, member by member: only regular files and
folders, names normalised and kept inside the folder (no links, devices, absolute paths or `..`),
under a lock, so concurrent runs wait for one unpacking and never delete a finished tree. Every
image is decoded once before any backbone work: bad ones stop the run or are skipped and listed.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import PipelineError, reason
from .dataset import Dataset, Split
from ..durable import file_lock, publish
from .images import IMAGE_EXTS, BadImage, decode_image

UNPACKED = ".unpacked"   # written last inside an unpacked tree: the tree is whole


def shown(path: str) -> str:
    """A path for a one-line message, undecodable bytes shown as \\xNN escapes."""
    return repr(os.fsencode(path))[2:-1]


def _utf8(name: str, where: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(f"{shown(where)}: the name is not valid UTF-8; rename it (caches store names as "
                            "UTF-8)") from None
    return name


def _member_name(tar_path: str, m: tarfile.TarInfo) -> str | None:
    """The member's normalised relative name, or PipelineError when it could land outside its folder."""
    name = posixpath.normpath(m.name.replace("\\", "/"))
    if name in (".", ""):
        return None
    if name.startswith("/") or name == ".." or name.startswith("../"):
        raise PipelineError(f"{tar_path}: member {shown(m.name)} points outside the archive's folder; refusing it "
                            "(use an archive of plain folders and image files)")
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise PipelineError(f"{tar_path}: member {shown(m.name)} is a {kind}; image archives may hold only "
                            "folders and files (re-create it without links)")
    return _utf8(name, f"{tar_path}: member {m.name}")


def _unpack(tar_path: str, dest: str):
    """Regular files and folders of the archive under dest, nothing else and nowhere else."""
    os.makedirs(dest)
    with tarfile.open(tar_path, "r:*") as tar:
        for m in tar:
            name = _member_name(tar_path, m)
            if name is None:
                continue
            target = os.path.join(dest, name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    with open(os.path.join(dest, UNPACKED), "w"):
        pass


def unpack(tar_path: str, sources_dir: str | None) -> str:
    """The folder an image-folder tarball unpacks to, unpacked now if needed (keyed by path, size, mtime)."""
    st = os.stat(tar_path)
    tag = hashlib.sha256(f"{os.path.abspath(tar_path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    try:
        if sources_dir is None:
            out = tempfile.mkdtemp(prefix="pipeline-images-")
            atexit.register(shutil.rmtree, out, True)
            os.rmdir(out)
            _unpack(tar_path, out)      # on failure, the atexit hook removes what was written
            return out
        out = os.path.join(sources_dir, f"{os.path.basename(tar_path).split('.')[0]}-{tag}")
        with file_lock(out + ".lock", wait=True):     # a second run waits here, then finds the tree whole
            if os.path.exists(os.path.join(out, UNPACKED)):
                return out
            for stale in (out, out + ".tmp"):         # cut short (no mark): nobody else holds the lock
                shutil.rmtree(stale, ignore_errors=True)
            try:
                _unpack(tar_path, out + ".tmp")
            except BaseException:
                shutil.rmtree(out + ".tmp", ignore_errors=True)
                raise
            publish(out + ".tmp", out)
        return out
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PipelineError(f"{tar_path}: not a readable .tar.gz ({reason(e, 60)}); pass a CIFAR folder, its .tar.gz, "
                            "or an image-folder tree (or its .tar.gz)") from None


def _listdir(path: str) -> list:
    return sorted(_utf8(e, os.path.join(path, e)) for e in os.listdir(path) if not e.startswith("."))


def load_image_folders(path: str, splits, sources_dir: str | None = None, max_pixels: int | None = None) -> Dataset:
    root = unpack(path, sources_dir) if os.path.isfile(path) else path
    entries = _listdir(root)
    if not {"train", "test"} & set(entries) and len(entries) == 1 and os.path.isdir(os.path.join(root, entries[0])):
        root = os.path.join(root, entries[0])  # a tree wrapped in one top folder, as tarballs often are
        entries = _listdir(root)
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
        classes = [c for c in _listdir(sdir) if os.path.isdir(os.path.join(sdir, c))]
        if not classes:
            raise PipelineError(f"{sdir}: no class folders; expected {s}/CLASS/*.png")
        found[s] = {}
        for c in classes:
            files = [f for f in _listdir(os.path.join(sdir, c)) if f.lower().endswith(IMAGE_EXTS)]
            if not files:
                raise PipelineError(f"{os.path.join(sdir, c)}: empty class folder (no {', '.join(IMAGE_EXTS)} files); "
                                    "add images or remove the folder")
            found[s][c] = files
    class_names = sorted(set().union(*(set(v) for v in found.values())))
    ds = Dataset(f"imagefolder:{os.path.basename(os.path.abspath(path)).split('.')[0]}", class_names)
    for s, by_class in found.items():
        rel = [f"{s}/{c}/{f}" for c in sorted(by_class) for f in by_class[c]]
        labels = np.array([class_names.index(c) for c in sorted(by_class) for _ in by_class[c]], dtype=np.int64)
        ds.splits[s] = Split(s, labels, np.array(rel, dtype=object), paths=[os.path.join(root, r) for r in rel],
                             **({"max_pixels": max_pixels} if max_pixels else {}))
    return ds


def _digest(path: str, max_pixels: int):
    try:
        img = decode_image(path, max_pixels)
    except BadImage as e:
        return e
    return hashlib.blake2b(np.array(img.shape, "<i8").tobytes() + img.tobytes(), digest_size=16).digest()


def check_images(ds: Dataset, on_bad_image: str = "fail") -> Dataset:
    """Decode every image file once (in threads), before any backbone work: a bad one stops the run
    (on_bad_image="fail") or is left out and listed in ds.skipped ("skip"). Each kept image's pixel
    digest is kept on its split for the dataset fingerprint."""
    for name, split in list(ds.splits.items()):
        if split.paths is None:
            continue
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
            digests = list(pool.map(_digest, split.paths, [split.max_pixels] * len(split)))
        bad = [i for i, d in enumerate(digests) if isinstance(d, BadImage)]
        if bad and on_bad_image == "fail":
            first = digests[bad[0]]
            raise PipelineError(f"bad image {first.path}: {first.reason}; fix or remove it, or pass "
                                f"--on-bad-image skip ({len(bad)} bad image(s) in {name})")
        if bad:
            ds.skipped += [{"split": name, "path": str(split.ids[i]), "reason": digests[i].reason} for i in bad]
            keep = [i for i, d in enumerate(digests) if not isinstance(d, BadImage)]
            split = ds.splits[name] = split.subset(keep)
            digests = [digests[i] for i in keep]
        if not len(split):
            raise PipelineError(f"split {name}: no readable images left; check the data")
        split.digests = digests
    return ds
