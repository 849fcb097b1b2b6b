"""The HDF5 layout check: files from outside may only hold their own bytes, in plain datasets."""
import os

import h5py
import numpy as np
import pytest

from pipeline.hdf5_layout import LayoutError, check_file, check_tree


def layout_error(path):
    size = check_file(path)
    with h5py.File(path, "r") as f:
        with pytest.raises(LayoutError) as e:
            check_tree(f, size)
    return str(e.value)


def test_plain_file_passes_and_lists_its_datasets(tmp_path):
    path = str(tmp_path / "ok.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("a/x", data=np.arange(6.0))
        f["a"].attrs["note"] = "fine"
        f.create_dataset("s", data=np.array(["p", "q"], dtype=object), dtype=h5py.string_dtype())
    with h5py.File(path, "r") as f:
        assert sorted(check_tree(f, check_file(path))) == ["a/x", "s"]


def test_data_from_elsewhere_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(64))
    src = str(tmp_path / "src.h5")
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=np.zeros(16, np.float32))
    cases = {
        "external storage": lambda f: f.create_dataset("d", (16,), "f4", external=[(str(secret), 0, 64)]),
        "virtual dataset": lambda f: f.create_virtual_dataset("d", _virtual(src)),
        "SoftLink": lambda f: (f.create_dataset("x", data=np.zeros(2)), f.__setitem__("d", h5py.SoftLink("/x"))),
        "ExternalLink": lambda f: f.__setitem__("d", h5py.ExternalLink(src, "/x")),
        "chunked": lambda f: f.create_dataset("d", data=np.zeros(16), chunks=(4,)),
        "not in the file": lambda f: f.create_dataset("d", (10 ** 6, 10 ** 4), "f4"),      # 40 GB declared, unallocated
    }
    for needle, make in cases.items():
        path = str(tmp_path / f"{needle.replace(' ', '_')}.h5")
        with h5py.File(path, "w") as f:
            make(f)
        assert needle in layout_error(path), needle


def _virtual(src):
    layout = h5py.VirtualLayout(shape=(16,), dtype="f4")
    layout[:] = h5py.VirtualSource(src, "x", shape=(16,))
    return layout


def test_a_fifo_or_another_format_is_refused_without_opening_it(tmp_path):
    fifo = str(tmp_path / "cache.h5")
    os.mkfifo(fifo)
    with pytest.raises(LayoutError, match="not a regular file"):
        check_file(fifo)                      # os.stat only: opening a FIFO would block forever
    (tmp_path / "t.h5").write_text("plain text")
    with pytest.raises(LayoutError, match="not an HDF5 file"):
        check_file(str(tmp_path / "t.h5"))


def test_deep_or_cyclic_trees_are_bounded(tmp_path):
    path = str(tmp_path / "deep.h5")
    with h5py.File(path, "w") as f:
        f.create_group("/".join("g" * 12))
    assert "levels" in layout_error(path)
    path = str(tmp_path / "cycle.h5")
    with h5py.File(path, "w") as f:
        f.create_group("a/b")
        f["a/b/up"] = f["a"]                  # a hard link back to an ancestor
    assert "levels" in layout_error(path)


def test_a_reader_that_crashes_in_the_child_refuses_the_file(tmp_path):
    """parse_elsewhere runs the reader in a child process: a crash (a signal) is why the file is refused; a
    reader that finishes, even raising, is not (one that never ends: test_cache_memo's looping heap)."""
    from pipeline.hdf5_layout import parse_elsewhere
    path = str(tmp_path / "x.h5")
    open(path, "wb").write(b"anything")
    assert "crashed reading it (signal 11)" in parse_elsewhere(path, f"{__name__}:_crash")
    assert "reading its metadata was killed (signal 9: out of memory?" in parse_elsewhere(path, f"{__name__}:_killed")
    assert parse_elsewhere(path, "pipeline.hdf5_layout:check_file") is None                     # raises LayoutError: finished


def _crash(path, sig="SIGSEGV"):
    """A reader that dies of a signal, as libhdf5 may on a crafted file (run in parse_elsewhere's child)."""
    import signal
    os.kill(os.getpid(), getattr(signal, sig))


def _killed(path):
    """A reader killed as the out-of-memory killer kills (SIGKILL), not by parse_elsewhere's timeout."""
    _crash(path, "SIGKILL")
