"""Reader for image-folder trees ROOT/{train,test}/CLASS/*.png (a folder, or a .tar.gz of one).

A tarball is unpacked once into `<cache-dir>/sources/<name>-<its SHA-256>`, keyed by content (a
tarball replaced under the same name is another tree), member by member: only regular files and
folders, names normalised and kept inside the folder (no links, devices, absolute paths or `..`),
every member's size, their total and their count capped, all checked in a first pass over the
headers before anything is written; under a lock, so concurrent runs wait for one unpacking and
never delete a finished tree. A folder tree is read as it is: regular files only, links only where
they stay inside the tree. Class names are the folder names in Unicode NFC, printable. Every image is
decoded once before any backbone work: bad ones stop the run or are skipped and listed.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import PipelineError, SettingError, reason
from .dataset import CheckedDataset, Dataset, Split
from ..durable import file_lock, publish, write_error
from ..hashing import file_sha256
from ..text_table import escaped
from .config import FeatureConfig
from .images import IMAGE_EXTS, BadImage, decode_image

log = logging.getLogger(__name__)

UNPACKED = ".unpacked"   # written last inside an unpacked tree: the tree is whole
MAX_MEMBER_BYTES = 256 << 20     # one archive member (a 50-megapixel BMP is 150 MB)
MAX_MEMBERS = 1_000_000          # members in one archive (each costs an inode and a header)


def _utf8(name: str, where: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(f"{escaped(where)}: the name is not valid UTF-8; rename it (caches store names as "
                            "UTF-8)") from None
    return name


def _member_name(tar_path: str, m: tarfile.TarInfo) -> str | None:
    """The member's normalised relative name, or PipelineError when it could land outside its folder."""
    name = posixpath.normpath(m.name.replace("\\", "/"))
    if name in (".", ""):
        return None
    if name.startswith("/") or name == ".." or name.startswith("../"):
        raise PipelineError(f"{tar_path}: member {escaped(m.name)} points outside the archive's folder; refusing it "
                            "(use an archive of plain folders and image files)")
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise PipelineError(f"{tar_path}: member {escaped(m.name)} is a {kind}; image archives may hold only "
                            "folders and files (re-create it without links)")
    return _utf8(name, f"{tar_path}: member {m.name}")


def _members(tar_path: str, max_bytes: int):
    """(member, name) of every file or folder of the archive, each checked (name, kind, size) and the
    total and count capped as they come: the first bad header stops it, before anything is written."""
    total, count = 0, 0
    with tarfile.open(tar_path, "r:*") as tar:
        for m in tar:
            tar.members = []            # tarfile keeps every header it read: a million of them is gigabytes
            count += 1
            name = _member_name(tar_path, m)
            total += m.size if m.isfile() else 0
            if m.isfile() and m.size > MAX_MEMBER_BYTES or total > max_bytes or count > MAX_MEMBERS:
                raise PipelineError(
                    f"{tar_path}: member {escaped(m.name)} takes it past a cap ({m.size:,} bytes; {total:,} bytes and "
                    f"{count:,} members so far; caps: {MAX_MEMBER_BYTES:,} per member, max_archive_bytes "
                    f"{max_bytes:,} in all, {MAX_MEMBERS:,} members); nothing was unpacked: raise "
                    "max_archive_bytes if the archive is meant, or pass the unpacked folder")
            if name is not None:
                yield tar, m, name


def _unpack(tar_path: str, dest: str, max_bytes: int):
    """Regular files and folders of the archive under dest, nothing else and nowhere else; every
    header checked in a first pass before anything is written."""
    for _ in _members(tar_path, max_bytes):
        pass
    os.makedirs(dest)
    for tar, m, name in _members(tar_path, max_bytes):
        target = os.path.join(dest, name)
        if m.isdir():
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tar.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    with open(os.path.join(dest, UNPACKED), "w"):
        pass


def unpack(tar_path: str, sources_dir: str | None, max_bytes: int = FeatureConfig.max_archive_bytes) -> str:
    """The folder an image-folder tarball unpacks to, unpacked now if needed (keyed by the archive's
    SHA-256, remembered by its path, size, mtime, ctime and inode)."""
    try:
        if sources_dir is None:
            out = tempfile.mkdtemp(prefix="pipeline-images-")
            atexit.register(shutil.rmtree, out, True)
            os.rmdir(out)
            _unpack(tar_path, out, max_bytes)      # on failure, the atexit hook removes what was written
            return out
        tag = file_sha256(tar_path, sources_dir)[:16]
        out = os.path.join(sources_dir, f"{os.path.basename(tar_path).split('.')[0][:64]}-{tag}")
        with file_lock(out + ".lock", wait=True):     # a second run waits here, then finds the tree whole
            if os.path.exists(os.path.join(out, UNPACKED)):
                return out
            for stale in (out, out + ".tmp"):         # cut short (no mark): nobody else holds the lock
                shutil.rmtree(stale, ignore_errors=True)
            try:
                _unpack(tar_path, out + ".tmp", max_bytes)
            except BaseException:
                shutil.rmtree(out + ".tmp", ignore_errors=True)
                raise
            publish(out + ".tmp", out)
        return out
    except (tarfile.TarError, EOFError, OSError) as e:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):   # the unpacked tree's side
            raise write_error(e, sources_dir or "a temporary folder") from None      # (a full disk), not the archive's
        raise PipelineError(f"{tar_path}: not a readable .tar.gz ({reason(e, 60)}); pass a CIFAR folder, its .tar.gz, "
                            "or an image-folder tree (or its .tar.gz)") from None


def _listdir(path: str) -> list:
    return sorted(_utf8(e, os.path.join(path, e)) for e in os.listdir(path) if not e.startswith("."))


def _inside(root: str, path: str, want_dir: bool) -> bool:
    """Whether `path` is a folder (want_dir) or a regular file, itself or through links that stay under
    `root`; PipelineError for a link out of the tree or a FIFO, device or socket (never opened)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise PipelineError(f"{escaped(path)}: cannot read ({e.strerror}); fix or remove it") from None
    if os.path.islink(path) and os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) != \
            os.path.realpath(root):
        raise PipelineError(f"{escaped(path)}: a link out of the data_dir (to {escaped(os.path.realpath(path))}); "
                            "copy what it points to into the tree, or remove it")
    if stat.S_ISDIR(st.st_mode):
        return want_dir
    if not stat.S_ISREG(st.st_mode):
        raise PipelineError(f"{escaped(path)}: not a regular file (a FIFO, device or socket); remove it")
    return not want_dir


def class_name(folder: str, where: str) -> str:
    """A class folder's name as the class is called: Unicode NFC; printable (a TAB or newline would
    forge lines in predict's output), else PipelineError."""
    name = unicodedata.normalize("NFC", folder)
    if not name.isprintable():
        raise PipelineError(f"{escaped(where)}: the class folder's name holds a TAB, newline or other control "
                            "character; rename it")
    return name


def load_image_folders(path: str, splits, sources_dir: str | None = None, max_pixels: int | None = None,
                       max_archive_bytes: int = FeatureConfig.max_archive_bytes) -> Dataset:
    root = unpack(path, sources_dir, max_archive_bytes) if os.path.isfile(path) else path
    entries = _listdir(root)
    if not {"train", "test"} & set(entries) and len(entries) == 1 and os.path.isdir(os.path.join(root, entries[0])):
        root = os.path.join(root, entries[0])  # a tree wrapped in one top folder, as tarballs often are
        entries = _listdir(root)
    if not entries:
        raise SettingError("data_dir", f"{path}: empty; expected CIFAR python batches or ROOT/{{train,test}}/CLASS/*.png",
                           "FeatureConfig")
    if not {"train", "test"} & set(entries):
        raise SettingError("data_dir", f"{path}: holds neither CIFAR python batches nor train/ and test/ image "
                           "folders; expected ROOT/{train,test}/CLASS/*.png", "FeatureConfig")
    found = {}
    for s in splits:
        sdir = os.path.join(root, s)
        if not os.path.isdir(sdir):
            raise SettingError("data_dir", f"{path}: no '{s}' folder; add {s}/CLASS/*.png or leave {s} out of splits",
                               "FeatureConfig")
        classes = [c for c in _listdir(sdir) if _inside(root, os.path.join(sdir, c), want_dir=True)]
        if not classes:
            raise PipelineError(f"{sdir}: no class folders; expected {s}/CLASS/*.png")
        found[s] = {}
        for c in classes:
            cdir = os.path.join(sdir, c)
            files = [f for f in _listdir(cdir) if f.lower().endswith(IMAGE_EXTS) and _inside(root, os.path.join(cdir, f),
                                                                                          want_dir=False)]
            if not files:
                raise PipelineError(f"{cdir}: empty class folder (no {', '.join(IMAGE_EXTS)} files); "
                                    "add images or remove the folder")
            name = class_name(c, cdir)
            if name in found[s]:
                raise PipelineError(f"{escaped(cdir)}: two class folders of {s} are both called {name!r} (Unicode "
                                    "normalisation); merge them")
            found[s][name] = (c, files)
    class_names = sorted(set().union(*(set(v) for v in found.values())))
    for c in class_names:
        if len(found) > 1 and any(c not in by_class for by_class in found.values()):
            log.warning(f"class {c!r} is only in {', '.join(s for s in found if c in found[s])}; check the folder "
                        "names (the same class must have the same name in every split)")
    ds = Dataset(f"imagefolder:{os.path.basename(os.path.abspath(path)).split('.')[0]}", class_names)
    for s, by_class in found.items():
        rel = [f"{s}/{by_class[c][0]}/{f}" for c in sorted(by_class) for f in by_class[c][1]]
        labels = np.array([class_names.index(c) for c in sorted(by_class) for _ in by_class[c][1]], dtype=np.int64)
        ds.splits[s] = Split(s, labels, np.array(rel, dtype=object), paths=[os.path.join(root, r) for r in rel],
                             **({"max_pixels": max_pixels} if max_pixels else {}))
    return ds


def _digest(path: str, max_pixels: int):
    try:
        img = decode_image(path, max_pixels)
    except BadImage as e:
        return e
    return hashlib.blake2b(np.array(img.shape, "<i8").tobytes() + img.tobytes(), digest_size=16).digest()


def check_images(ds: Dataset, on_bad_image: str = "fail") -> CheckedDataset:
    """Decode every image file once (in threads), before any backbone work: a bad one stops the run
    (on_bad_image="fail") or is left out and listed in `skipped` ("skip"). The checked dataset keeps
    each kept image's pixel digest, for the fingerprint; `ds` itself is left as it was."""
    out = CheckedDataset(ds.name, ds.class_names, dict(ds.splits), list(ds.skipped))
    for name, split in ds.splits.items():
        out.digests[name] = None
        if split.paths is None:
            continue
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
            digests = list(pool.map(_digest, split.paths, [split.max_pixels] * len(split)))
        bad = [i for i, d in enumerate(digests) if isinstance(d, BadImage)]
        first = digests[bad[0]] if bad else None
        if bad and on_bad_image == "fail":
            raise PipelineError(f"bad image {escaped(first.path)}: {first.reason}; fix or remove it, or pass "
                                f"on_bad_image skip ({len(bad)} bad image(s) in {name})")
        if bad:
            out.skipped += [{"split": name, "path": str(split.ids[i]), "reason": digests[i].reason} for i in bad]
            log.warning(f"{name}: left out {len(bad)} bad image(s) (on_bad_image skip), the first {escaped(first.path)}: "
                        f"{first.reason}; the cache's provenance lists them (skipped)")
            keep = [i for i, d in enumerate(digests) if not isinstance(d, BadImage)]
            split = out.splits[name] = split.subset(keep)
            digests = [digests[i] for i in keep]
        if not len(split):
            raise PipelineError(f"split {name}: no readable images left; check the data")
        out.digests[name] = digests
    return out
