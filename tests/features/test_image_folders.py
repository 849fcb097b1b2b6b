import io
import os
import tarfile
import threading

import numpy as np
import pytest
from conftest import make_tar

from pipeline.errors import PipelineError
from pipeline.features.image_folders import check_images, load_image_folders, unpack


def test_image_folders_any_mode_and_size_become_rgb(folder_dir):
    from PIL import Image
    Image.new("P", (17, 23), color=5).save(os.path.join(folder_dir, "train", "cat", "palette.png"))
    ds = load_image_folders(folder_dir, ("train", "test"))
    assert ds.class_names == ["cat", "dog", "frog"]
    train = ds.splits["train"]
    assert len(train) == 13 and "train/cat/palette.png" in list(train.ids)
    for img in train.read(0, len(train)):
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    shapes = {img.shape for img in train.read(0, len(train))}
    assert (45, 37, 3) in shapes and (20, 28, 3) in shapes and (23, 17, 3) in shapes


def test_image_folder_tarball_with_top_folder(folder_dir, tmp_path):
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "wrapped")
    a = load_image_folders(folder_dir, ("test",)).splits["test"]
    b = load_image_folders(tar, ("test",), sources_dir=str(tmp_path / "src")).splits["test"]
    assert list(a.ids) == list(b.ids)
    assert all(np.array_equal(x, y) for x, y in zip(a.read(0, len(a)), b.read(0, len(b))))


def test_empty_data_dir(tmp_path):
    with pytest.raises(PipelineError, match="empty"):
        load_image_folders(str(tmp_path), ("train",))


def test_missing_split(folder_dir):
    import shutil
    shutil.rmtree(os.path.join(folder_dir, "test"))
    with pytest.raises(PipelineError, match="no 'test' folder"):
        load_image_folders(folder_dir, ("train", "test"))


def test_empty_class_folder(folder_dir):
    os.makedirs(os.path.join(folder_dir, "train", "empty"))
    with pytest.raises(PipelineError, match="empty class folder"):
        load_image_folders(folder_dir, ("train",))


# --- crafted archives: nothing lands outside the archive's own folder ----------------------------------
def crafted(path, members):
    """A .tar.gz of (TarInfo fields, data) members."""
    with tarfile.open(path, "w:gz") as tar:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data) if data else None)
    return str(path)


PNG = b"\x89PNG\r\n\x1a\n not decoded"  # refused before any decoding: any bytes will do


def link_chain():
    """CVE-2025-4517's shape: symlinks whose resolution runs past PATH_MAX, then a write through them."""
    d = "d" * 247
    members = [({"name": "root/train/cat", "type": tarfile.DIRTYPE}, None)]
    step = "root"
    for i in range(16):
        members.append(({"name": f"{step}/{d}", "type": tarfile.DIRTYPE}, None))
        members.append(({"name": f"{step}/l{i}", "type": tarfile.SYMTYPE, "linkname": d}, None))
        step = f"{step}/{d}"
    members.append(({"name": "root/escape", "type": tarfile.SYMTYPE, "linkname": "/".join(["l0"] * 16) + "/../" * 16 + "../outside"}, None))
    members.append(({"name": "root/escape/pwned.png"}, PNG))
    return members


@pytest.mark.parametrize("members,needle", [
    ([({"name": "root/train/cat/a.png"}, PNG), ({"name": "../../outside.png"}, PNG)], "points outside"),
    ([({"name": "/tmp/absolute-pwned.png"}, PNG)], "points outside"),
    ([({"name": "root/train/cat", "type": tarfile.SYMTYPE, "linkname": "../../.."}, None),
      ({"name": "root/train/cat/pwned.png"}, PNG)], "is a link"),
    ([({"name": "root/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, None)], "is a link"),
    ([({"name": "root/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)], "is a special file"),
    (link_chain(), "is a link"),
])
def test_crafted_archive_is_refused_and_writes_nothing_outside(tmp_path, members, needle):
    base = tmp_path / "work"
    base.mkdir()
    tar = crafted(base / "evil.tar.gz", members)
    with pytest.raises(PipelineError) as e:
        load_image_folders(tar, ("train",), sources_dir=str(base / "cache" / "sources"))
    assert needle in str(e.value) and "\n" not in str(e.value)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["work", "work/cache", "work/cache/sources",
                       *sorted(f"work/cache/sources/{n}" for n in os.listdir(base / "cache" / "sources")),
                       "work/evil.tar.gz"]
    assert [n for n in os.listdir(base / "cache" / "sources") if not n.endswith((".lock", "sha256.json"))] == []  # no half tree
    assert not os.path.exists("/tmp/absolute-pwned.png")


def test_name_that_is_not_utf8_is_refused_with_its_bytes(folder_dir):
    bad = os.path.join(os.fsencode(folder_dir), b"train", b"cat", b"caf\xe9.png")
    with open(os.path.join(os.fsencode(folder_dir), b"train", b"cat", b"000.png"), "rb") as f, open(bad, "wb") as g:
        g.write(f.read())
    with pytest.raises(PipelineError, match=r"train/cat/caf\\xe9.png: the name is not valid UTF-8; rename it"):
        load_image_folders(folder_dir, ("train",))


def test_tar_member_name_that_is_not_utf8_is_refused(tmp_path):
    tar = str(tmp_path / "t.tar.gz")
    with tarfile.open(tar, "w:gz", format=tarfile.GNU_FORMAT, encoding="latin-1") as t:   # raw byte 0xE9 in the name
        info = tarfile.TarInfo("root/train/cat/caf\xe9.png")
        info.size = len(PNG)
        t.addfile(info, io.BytesIO(PNG))
    with pytest.raises(PipelineError, match=r"caf\\xe9.png.*not valid UTF-8"):
        load_image_folders(tar, ("train",), sources_dir=str(tmp_path / "src"))


def test_concurrent_unpacking_waits_and_never_deletes_a_finished_tree(folder_dir, tmp_path):
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "wrapped")
    src, results, errors = str(tmp_path / "src"), [], []

    def run():
        try:
            results.append(unpack(tar, src))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(set(results)) == 1
    tree = results[0]
    files = sorted(os.path.relpath(os.path.join(d, f), tree) for d, _, fs in os.walk(tree) for f in fs)
    assert len(files) == 25 and files[0] == ".unpacked"             # 24 images and the mark
    inode = os.stat(tree).st_ino
    assert unpack(tar, src) == tree and os.stat(tree).st_ino == inode   # reused, not replaced


def test_cut_short_unpacking_is_redone(folder_dir, tmp_path):
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "wrapped")
    tree = unpack(tar, str(tmp_path / "src"))
    os.remove(os.path.join(tree, ".unpacked"))                       # as if cut before the mark
    os.remove(os.path.join(tree, "wrapped", "test", "cat", "000.png"))
    assert unpack(tar, str(tmp_path / "src")) == tree
    assert os.path.exists(os.path.join(tree, "wrapped", "test", "cat", "000.png"))


# --- every image checked once, before any backbone work ---------------------------------------------
def test_bad_image_fails_or_is_skipped_and_listed(folder_dir):
    bad = os.path.join(folder_dir, "train", "cat", "bad.jpg")
    open(bad, "wb").close()
    with pytest.raises(PipelineError, match=r"bad image .*bad.jpg: zero-byte file.*on_bad_image skip"):
        check_images(load_image_folders(folder_dir, ("train", "test")))
    ds = check_images(load_image_folders(folder_dir, ("train", "test")), on_bad_image="skip")
    assert ds.skipped == [{"split": "train", "path": "train/cat/bad.jpg", "reason": "zero-byte file"}]
    assert "train/cat/bad.jpg" not in list(ds.splits["train"].ids) and len(ds.digests["train"]) == 12


def test_image_over_the_pixel_limit_is_a_bad_image(folder_dir):
    ds = load_image_folders(folder_dir, ("test",), max_pixels=32 * 32 - 1)
    with pytest.raises(PipelineError, match=r"bad image .*: 32 x 32 = 1,024 pixels, more than max_image_pixels 1,023"):
        check_images(ds)


def _bmp_tree(root, classes, value):
    import cv2
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
            for j in range(2):
                cv2.imwrite(os.path.join(root, split, c, f"{j}.bmp"), np.full((8, 8, 3), value + j, np.uint8))
    return root


def test_a_tarball_replaced_with_the_same_size_and_mtime_is_unpacked_again(tmp_path):
    """cp -p / rsync -t / mv over the old archive: same path, size and mtime; other images and classes."""
    old, new = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    for out, classes, value in ((old, ("cat", "dog"), 10), (new, ("cow", "pig"), 200)):
        with tarfile.open(out, "w") as tar:        # plain tar of same-size BMPs: byte-for-byte the same size
            tar.add(_bmp_tree(str(tmp_path / os.path.basename(out)[0]), classes, value), arcname="t")
    assert os.path.getsize(old) == os.path.getsize(new)
    st = os.stat(old)
    src = str(tmp_path / "src")
    assert load_image_folders(old, ("train",), sources_dir=src).class_names == ["cat", "dog"]
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, old)
    ds = load_image_folders(old, ("train",), sources_dir=src)
    assert ds.class_names == ["cow", "pig"] and ds.splits["train"].read(0, 1)[0][0, 0, 0] == 200


def test_archives_are_capped_before_anything_is_written(folder_dir, tmp_path, monkeypatch):
    from pipeline.features import image_folders
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "t")
    src = tmp_path / "src"
    with pytest.raises(PipelineError, match="max_archive_bytes 1,000 in all") as e:
        load_image_folders(tar, ("train",), sources_dir=str(src), max_archive_bytes=1000)
    assert "\n" not in str(e.value) and not [n for n in os.listdir(src) if not n.endswith((".lock", ".json"))]
    monkeypatch.setattr(image_folders, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(PipelineError, match="100 per member"):
        load_image_folders(tar, ("train",), sources_dir=str(src))
    monkeypatch.setattr(image_folders, "MAX_MEMBER_BYTES", 1 << 20)
    monkeypatch.setattr(image_folders, "MAX_MEMBERS", 5)
    with pytest.raises(PipelineError, match="5 members"):
        load_image_folders(tar, ("train",), sources_dir=str(src))
    assert not [n for n in os.listdir(src) if not n.endswith((".lock", ".json"))]


def test_a_fifo_a_link_out_or_a_tab_in_a_class_name_is_one_line(folder_dir, tmp_path):
    import signal

    def hung(*_):
        raise TimeoutError("blocked on a FIFO")
    os.mkfifo(os.path.join(folder_dir, "train", "cat", "zz.png"))
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(PipelineError, match="not a regular file"):
            load_image_folders(folder_dir, ("train",))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    os.remove(os.path.join(folder_dir, "train", "cat", "zz.png"))
    outside = tmp_path / "secret.png"
    outside.write_bytes(open(os.path.join(folder_dir, "train", "cat", "000.png"), "rb").read())
    os.symlink(outside, os.path.join(folder_dir, "train", "cat", "link.png"))
    with pytest.raises(PipelineError, match="a link out of the data_dir"):
        load_image_folders(folder_dir, ("train",))
    os.remove(os.path.join(folder_dir, "train", "cat", "link.png"))
    os.symlink(os.path.join(folder_dir, "train", "cat", "000.png"), os.path.join(folder_dir, "train", "cat", "in.png"))
    assert "train/cat/in.png" in list(load_image_folders(folder_dir, ("train",)).splits["train"].ids)  # inside: fine
    os.rename(os.path.join(folder_dir, "train", "dog"), os.path.join(folder_dir, "train", "d\tog"))
    with pytest.raises(PipelineError, match="TAB, newline"):
        load_image_folders(folder_dir, ("train",))


def test_class_names_are_nfc_and_a_class_in_one_split_is_named(folder_dir, capsys):
    import unicodedata
    for split, form in (("train", "NFD"), ("test", "NFC")):
        os.rename(os.path.join(folder_dir, split, "frog"), os.path.join(folder_dir, split, unicodedata.normalize(form, "café")))
    ds = load_image_folders(folder_dir, ("train", "test"))
    assert ds.class_names == ["café", "cat", "dog"] and "warning" not in capsys.readouterr().err
    os.rename(os.path.join(folder_dir, "test", "dog"), os.path.join(folder_dir, "test", "dogs"))
    load_image_folders(folder_dir, ("train", "test"))
    err = capsys.readouterr().err
    assert "class 'dog' is only in train" in err and "class 'dogs' is only in test" in err


def test_a_full_disk_while_unpacking_blames_the_disk_not_the_archive(folder_dir, tmp_path, monkeypatch):
    import errno
    import shutil as shutil_module
    tar = make_tar(folder_dir, str(tmp_path / "imgs.tar.gz"), "wrapped")

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil_module, "copyfileobj", full)
    with pytest.raises(PipelineError) as e:
        unpack(tar, str(tmp_path / "src"))
    assert str(e.value).startswith(f"no space left on the device while writing {tmp_path / 'src'}")
    assert "not a readable" not in str(e.value) and "cache_dir" in str(e.value)
    assert [f for f in os.listdir(tmp_path / "src") if not f.endswith((".lock", ".json"))] == []   # no half tree
