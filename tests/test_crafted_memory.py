"""A crafted input of a few MB never takes the process past 1 GB above its baseline: each one is
built here, handed to the reader that would meet it, and refused; peak RSS is read in a fresh process
(it only grows: the attempts run in order of what they may take, least first)."""
import json
import subprocess
import sys

LIMIT = 1 << 30

SCRIPT = r'''
import io, json, os, resource, sys, tarfile, zipfile
import h5py, numpy as np
from pipeline.errors import PipelineError
from pipeline.features.cifar_batches import load_cifar_batches
from pipeline.features.cache import DamagedCache, load_cache
from pipeline.features.image_folders import load_image_folders
from pipeline.features.images import BadImage, decode_image
from pipeline.heads.keras_file import read_head, write_head
tmp = sys.argv[1]
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out, base = {}, peak()

def attempt(name, fn, errors):
    try:
        fn()
        out[name] = "accepted"
    except errors as e:
        out[name] = "refused"
    out[name + "_peak_over_base"] = peak() - base

head = os.path.join(tmp, "h.keras")
write_head(head, np.zeros((4, 2), np.float32), np.zeros(2, np.float32))
with zipfile.ZipFile(head) as z:
    members = {n: z.read(n) for n in z.namelist()}
bomb = os.path.join(tmp, "bomb.keras")
with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:            # ~2 MB holding 2 GB
    z.writestr("metadata.json", members["metadata.json"])
    z.writestr("config.json", members["config.json"])
    with z.open("model.weights.h5", "w", force_zip64=True) as w:
        block = bytes(64 << 20)
        for _ in range(32):
            w.write(block)
attempt("zip_bomb_head", lambda: read_head(bomb), PipelineError)

buf = io.BytesIO()
with h5py.File(buf, "w") as f:
    f.create_dataset("layers/dense/vars/0", (50_000, 50_000), "f4")       # 10 GB declared, nothing stored
    f.create_dataset("layers/dense/vars/1", data=np.zeros(2, np.float32))
big = os.path.join(tmp, "big.keras")
with zipfile.ZipFile(big, "w") as z:
    for n, b in {**members, "model.weights.h5": buf.getvalue()}.items():
        z.writestr(n, b)
attempt("huge_kernel_head", lambda: read_head(big), PipelineError)

cache = os.path.join(tmp, "c.h5")
with h5py.File(cache, "w") as f:                                        # 100 KB declaring 4.4 GB
    g = f.create_group("train")
    g.create_dataset("features", (110_000, 10_000), "f4")
    g.create_dataset("labels", data=np.zeros(10, np.int64))
    g.create_dataset("ids", data=np.zeros(10, np.int64))
    f.attrs["complete"] = True
attempt("huge_cache", lambda: load_cache(cache), DamagedCache)

tgz = os.path.join(tmp, "bomb.tar.gz")                                  # ~0.6 MB expanding to 600 MB
class Zeros(io.RawIOBase):
    def __init__(self, n): self.left = n
    def readable(self): return True
    def readinto(self, b):
        n = min(len(b), self.left); b[:n] = bytes(n); self.left -= n; return n
with tarfile.open(tgz, "w:gz", compresslevel=1) as t:
    info = tarfile.TarInfo("t/train/cat/0.bmp"); info.size = 600 << 20
    t.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
attempt("tar_bomb", lambda: load_image_folders(tgz, ("train",), sources_dir=os.path.join(tmp, "src")), PipelineError)
out["tar_bomb_left_behind"] = sum(len(fs) for _, _, fs in os.walk(os.path.join(tmp, "src"))
                                  if not any(f.endswith((".lock", ".json")) for f in fs))

png = os.path.join(tmp, "big.png")                                      # a PNG header of 40000 x 40000
import zlib, struct
ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
open(png, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 << 20))) + chunk(b"IEND", b""))
attempt("huge_png", lambda: decode_image(png), BadImage)
class Pattern(io.RawIOBase):                                            # head + unit * count + tail, streamed
    def __init__(self, head, unit, count, tail): self.parts = [head, unit * (1 << 16), count >> 16, tail]
    def readable(self): return True
    def readinto(self, b):
        head, block, blocks, tail = self.parts
        if head: data, self.parts[0] = head, b""
        elif blocks: data, self.parts[2] = block, blocks - 1
        else: data, self.parts[3] = tail, b""
        n = len(data); b[:n] = data; return n          # b is 8 KB or more: a block of 128 KB is read in parts
def cifar_tar(path, name, head, unit, count, tail):
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        info = tarfile.TarInfo(name); info.size = len(head) + len(unit) * count + len(tail)
        t.addfile(info, io.BufferedReader(Pattern(head, unit, count, tail), 1 << 20))
big = os.path.join(tmp, "batch.tar.gz")                                 # ~1 MB: a batch of 1 GiB of zero pixels
n = 1 << 30
cifar_tar(big, "cifar-10-batches-py/data_batch_1", b"\x80\x02}(U\x04dataB" + n.to_bytes(4, "little"), b"\0",
          n, b"U\x06labels]u.")
attempt("cifar_big_batch", lambda: load_cifar_batches(big, ("train",)), PipelineError)
labels = os.path.join(tmp, "labels.tar.gz")                             # ~200 KB: CIFAR-100's train file (within its
n = 90 << 20                                                            # cap) holding a list of 94 million labels
cifar_tar(labels, "cifar-100-python/train", b"\x80\x02}(U\x04dataC\x00U\x0bfine_labels](", b"K\x00", n, b"eu.")
attempt("cifar_many_labels", lambda: load_cifar_batches(labels, ("train",)), PipelineError)

print(json.dumps(out))
'''


def test_crafted_inputs_stay_under_a_gigabyte(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("zip_bomb_head", "huge_kernel_head", "huge_cache", "tar_bomb", "huge_png", "cifar_big_batch",
                 "cifar_many_labels"):
        assert out[name] == "refused", (name, out)
        assert out[name + "_peak_over_base"] < LIMIT, (name, out)
    assert out["tar_bomb_left_behind"] == 0
