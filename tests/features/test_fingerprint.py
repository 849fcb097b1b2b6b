import os

from conftest import make_tar

from pipeline.features.fingerprint import fingerprint
from pipeline.features.sources import open_dataset


def fp_of(path, splits=("train", "test"), limit=None, **kw):
    return fingerprint(open_dataset("cifar10", path, splits, limit, **kw))


def test_same_data_same_fingerprint_folder_or_tarball(cifar_dir, folder_dir, tmp_path):
    batches = os.path.join(cifar_dir, "cifar-10-batches-py")
    assert fp_of(cifar_dir) == fp_of(make_tar(batches, str(tmp_path / "c.tar.gz"), "cifar-10-batches-py"))
    tar = make_tar(folder_dir, str(tmp_path / "i.tar.gz"), "imgs")
    assert fp_of(folder_dir) == fp_of(tar, sources_dir=str(tmp_path / "src")) != fp_of(cifar_dir)


def test_one_pixel_or_one_label_changes_it(folder_dir):
    import cv2
    base = fp_of(folder_dir)
    path = os.path.join(folder_dir, "test", "dog", "000.png")
    img = cv2.imread(path)
    img[0, 0, 0] ^= 1
    cv2.imwrite(path, img)
    changed = fp_of(folder_dir)
    assert changed != base
    os.rename(path, os.path.join(folder_dir, "test", "frog", "zzz.png"))  # same pixels, other label
    assert fp_of(folder_dir) not in (base, changed)


def test_limit_changes_it(cifar_dir):
    assert fp_of(cifar_dir, ("train",)) != fp_of(cifar_dir, ("train",), 10)


def test_skipping_leaves_exactly_the_good_images(folder_dir):
    bad = os.path.join(folder_dir, "train", "cat", "bad.jpg")
    open(bad, "wb").close()
    skipped = fp_of(folder_dir, on_bad_image="skip")
    os.remove(bad)
    assert fp_of(folder_dir) == skipped


def test_the_fingerprint_takes_only_a_checked_dataset(folder_dir):
    """The fingerprint hashes a CheckedDataset (its own type, made by check_images), never a dataset that
    another module may or may not have checked first; checking leaves the unchecked dataset as it was."""
    import pytest

    from pipeline.features.image_folders import check_images, load_image_folders
    raw = load_image_folders(folder_dir, ("train", "test"))
    with pytest.raises(TypeError, match="expected a CheckedDataset"):
        fingerprint(raw)
    checked = check_images(raw)
    assert fingerprint(checked) == fingerprint(check_images(raw)) and not hasattr(raw, "digests")
    assert not hasattr(raw.splits["train"], "digests")
