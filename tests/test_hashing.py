"""File identity by content, remembered by what identifies the file on disk."""
import os

from pipeline import hashing


def test_file_hash_is_remembered_by_size_and_mtime(tmp_path, monkeypatch):
    p = tmp_path / "w.h5"
    p.write_bytes(b"x" * 1000)
    calls = []
    real = hashing.hashlib.sha256
    monkeypatch.setattr(hashing.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = hashing.file_sha256(str(p), str(tmp_path / "memo"))
    assert hashing.file_sha256(str(p), str(tmp_path / "memo")) == first and len(calls) == 1     # hashed once
    p.write_bytes(b"y" * 1000)                                                        # same size, new mtime
    assert hashing.file_sha256(str(p), str(tmp_path / "memo")) != first and len(calls) == 2
    (tmp_path / "memo" / hashing.MEMO).write_text("not json")                               # a damaged memo: rehash
    assert hashing.file_sha256(str(p), str(tmp_path / "memo")) == real(b"y" * 1000).hexdigest()


def test_a_file_replaced_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    """cp -p / rsync -t / mv: same path, size and mtime, new content: the inode or ctime tells."""
    p, q = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    p.write_bytes(b"old!" * 100)
    q.write_bytes(b"new!" * 100)
    st = os.stat(p)
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
    first = hashing.file_sha256(str(p), str(tmp_path / "memo"))
    os.replace(q, p)                                  # mv: same name, size and mtime
    assert hashing.file_sha256(str(p), str(tmp_path / "memo")) != first


def test_a_memo_entry_that_is_not_a_digest_is_hashed_again(tmp_path):
    """Found by fuzzing the cache folder's memos: an entry whose sha256 was a number made unpacking an
    image-folder tarball stop with a traceback (file_sha256(...)[:16]); it is hashed again."""
    import json
    p = tmp_path / "a.tar.gz"
    p.write_bytes(b"data" * 100)
    want = hashing.file_sha256(str(p), str(tmp_path / "memo"))
    path = tmp_path / "memo" / hashing.MEMO
    for bad in (5, None, "x" * 64, want.upper(), [want]):
        memo = json.load(open(path))
        memo[str(p)]["sha256"] = bad
        json.dump(memo, open(path, "w"))
        assert hashing.file_sha256(str(p), str(tmp_path / "memo")) == want, bad
    json.dump({str(p): "not an entry"}, open(path, "w"))
    assert hashing.file_sha256(str(p), str(tmp_path / "memo")) == want
