"""`bench`'s stage two: the head commands as fresh processes (start-up included) on synthetic caches,
each softmax row against its floor (FLOPs / the matmul rate, bytes / memory bandwidth), the sweep
as a fraction of the matmul rate, the logistic-regression C search with its time per fit, and what
a cache hit adds for its source (the files' identity, instead of decoding them).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

from .errors import PipelineError
from .heads.config import DEFAULTS

# --- what the rows measure (the softmax head's defaults; --full adds the two big rows) ------------
EPOCHS, CLASSES, VAL_FRACTION = 20, 10, 0.1
SWEEP_DROPOUTS, SWEEP_LRS = ("0.2", "0.35", "0.5", "0.65", "0.8", "0.9"), ("3e-4", "1e-3", "3e-3", "1e-2")
SWEEP = ("dropout=" + ",".join(SWEEP_DROPOUTS), "lr=" + ",".join(SWEEP_LRS))   # 24 configurations: 6 dropout groups
                                                                            # of 4 heads (40 weight rows each)
VIEWS, VIEW_DIM = 6, 10_240     # --full: the README's best width with 6 cached views (300,000 rows)
SEARCH_DIM = 10_240             # --full: the C search on 45,000 x 10,240 (float16)
TREE_FILES = 60_000             # --full: an image-folder tree as big as CIFAR-10's
TARBALL_IMAGES = 60_000         # --full: Keras' python batches of CIFAR-10's size, as a .tar.gz
CORETYPE = "OPENBLAS_CORETYPE"  # an environment's choice of OpenBLAS kernels: the step products are also timed without it
# -----------------------------------------------------------------------------------------------------


def run_cli(args: list) -> dict:
    """Run `python -m pipeline ...` as a fresh process; return its run's timings, wall time, the
    head's selection record (the C or l2 search), if any, and whether it was refit (a softmax head)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise PipelineError(f"bench: pipeline {' '.join(args[:2])} failed: {proc.stderr.strip().splitlines()[-1]}")
    run = proc.stdout.strip().splitlines()[-1]
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    return {"wall_s": wall, **metrics["timings"], "selection": metrics.get("selection"),
            "refit_used": metrics["hyperparameters"].get("refit_used")}


def median_time(fn, repeats):
    """Median seconds of `repeats` calls of fn, after one warm-up call (tracing, allocation)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def softmax_floor(train_rows: int, dim: int, itemsize: int, gflops: float, gbps: float, heads: int = 1) -> dict:
    """The fewest seconds `heads` softmax heads' training can take here: the forward and weight-gradient
    products at the matmul rate, or every training row read once per epoch at the memory bandwidth."""
    flops = EPOCHS * train_rows * dim * CLASSES * heads * 2 * 2
    bytes_ = EPOCHS * train_rows * dim * itemsize
    return {"flops": flops, "floor_s": max(flops / (gflops * 1e9), bytes_ / (gbps * 1e9))}


def step_products_gflops(batch: int, dim: int, outputs: int, repeats: int = 9) -> dict:
    """What the matmul library itself reaches on one training step's products of a dropout group
    (batch x dim masked features, `outputs` weight rows): the forward (batch x dim) @ (dim x outputs)
    and the weight gradient (outputs x batch) @ (batch x dim), float32, through NumPy's BLAS (on these
    shapes faster than Keras' matmul, whose rate is the table's matmul rate): the ceiling of the sweep's
    fraction of that rate, whatever computes the products."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((batch, dim), np.float32), rng.standard_normal((dim, outputs), np.float32)
    dz, steps = rng.standard_normal((outputs, batch), np.float32), 20

    def run():
        for _ in range(steps):
            x @ w
            dz @ x
    return {"shape": [batch, dim, outputs], "gflops": steps * 4 * batch * dim * outputs / median_time(run, repeats) / 1e9}


def blas_kernels() -> dict:
    """NumPy's matrix library as this process loaded it: its name, version and the kernels it runs (OpenBLAS
    picks them for the CPU when it is loaded, or takes them from OPENBLAS_CORETYPE where the environment sets it)."""
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    own = [i for i in blas if f"{os.sep}numpy" in i["filepath"]] or blas     # NumPy's own (numpy.libs), SciPy's has another
    info = own[0] if own else {}
    return {"library": info.get("internal_api"), "version": info.get("version"), "kernels": info.get("architecture"),
            "coretype_env": os.environ.get(CORETYPE)}


def step_products_own_kernels(batch: int, dim: int, outputs: int) -> dict | None:
    """Where the environment sets OPENBLAS_CORETYPE, step_products_gflops again in a process without it: the
    rate of the kernels OpenBLAS picks for this CPU itself (and their name); None where it is not set."""
    if CORETYPE not in os.environ:
        return None
    code = ("import json, sys\nfrom pipeline.bench_heads import blas_kernels, step_products_gflops\n"
            "print(json.dumps({**step_products_gflops(*map(int, sys.argv[1:])), 'blas': blas_kernels()}))")
    env = {k: v for k, v in os.environ.items() if k != CORETYPE}
    proc = subprocess.run([sys.executable, "-c", code, str(batch), str(dim), str(outputs)], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise PipelineError(f"bench: the step products without {CORETYPE} failed: "
                            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def heads(rows: int, dim: int, conv_dim: int, tmp: str, gflops: float, gbps: float, full: bool = False) -> dict:
    from .features.cache import load_cache
    from .features.synthetic import write_synthetic_cache
    from .heads.kernels import l2_cache_bytes
    runs, train_rows = os.path.join(tmp, "runs"), int(rows * (1 - VAL_FRACTION))
    first_load = {}                 # seconds of each cache's first, verifying load

    def verified_cache(name, *args, **kw):
        """A synthetic cache, loaded once untimed: the rows time a head on a cache an earlier head (or
        load) has verified, as every head after a cache's first (features/cache_memo.py)."""
        path = write_synthetic_cache(os.path.join(tmp, name), *args, **kw)
        t = time.perf_counter()
        load_cache(path)
        first_load[name] = time.perf_counter() - t
        return path

    def train(name, cache, *extra, head="softmax"):
        fixed = ["--epochs", str(EPOCHS), "--no-refit"] if head == "softmax" else []   # the row's head whatever --head-rows
        return run_cli(["train-head", "--cache", cache, "--runs-dir", runs, "--name", name, "--head", head, *fixed, *extra])
    subprocess.run([sys.executable, "-m", "pipeline.heads.kernels"], check=True, capture_output=True)  # compiled once, untimed
    cache = verified_cache("syn.h5", rows, rows // 5, dim=dim, separation=0.03)
    out = {"rows": rows, "dim": dim, "conv_dim": conv_dim, "l2_kib": l2_cache_bytes() >> 10,   # decides the kernels' split
           "softmax": train("softmax", cache),
           "logreg": train("logreg", cache, head="logreg"),
           "sweep24": run_cli(["sweep", "--cache", cache, "--runs-dir", runs, "--name", "sweep", "--epochs", str(EPOCHS), "--no-refit",
                               *(a for p in SWEEP for a in ("--param", p))])}
    out["softmax"].update(softmax_floor(train_rows, dim, 4, gflops, gbps))
    out["sweep24"].update(softmax_floor(train_rows, dim, 4, gflops, gbps, heads=24))
    step = (DEFAULTS["batch_size"], dim, len(SWEEP_LRS) * CLASSES)
    out["step_products"] = {**step_products_gflops(*step), "blas": blas_kernels()}
    if own := step_products_own_kernels(*step):
        out["step_products_own_kernels"] = own
    os.remove(cache)
    conv = verified_cache("conv.h5", rows, rows // 5, dim=conv_dim, separation=0.03, dtype="float16")
    out["softmax_conv"] = {**train("softmax-conv", conv), **softmax_floor(train_rows, conv_dim, 2, gflops, gbps)}
    os.remove(conv)
    if full:
        views = verified_cache("views.h5", rows, rows // 5, dim=VIEW_DIM, separation=0.03, views=VIEWS,
                               dtype="float16")
        out["softmax_views"] = {**train("softmax-views", views), "first_load_s": first_load["views.h5"],
                                **softmax_floor(train_rows * VIEWS, VIEW_DIM, 2, gflops, gbps)}
        os.remove(views)
        search = verified_cache("search.h5", rows, rows // 5, dim=SEARCH_DIM, separation=0.03, dtype="float16")
        out["c_search"] = train("c-search", search, "--C", "auto", head="logreg")
        os.remove(search)
        out["source_identity"] = source_identity_seconds(os.path.join(tmp, "tree"), TREE_FILES)
        out["tarball_identity"] = tarball_identity_seconds(os.path.join(tmp, "cifar-10-python.tar.gz"), TARBALL_IMAGES)
    return out


def source_identity_seconds(root: str, n_files: int) -> dict:
    """What a cache hit spends on its source: the identity of an n_files image-folder tree (every
    file's and folder's stat; features/source_memo.py), against decoding and hashing its images."""
    import cv2
    from .features.image_folders import check_images, load_image_folders
    from .features.source_memo import source_identity
    png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    for i in range(n_files):
        folder = os.path.join(root, "train", f"class_{i % 10}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(png)
    source_identity(root, {})                                  # the directory entries in memory, as on a rerun
    return {"files": n_files, **identity_against_decoding(root, lambda: check_images(load_image_folders(root, ("train",))))}


def identity_against_decoding(root: str, decode) -> dict:
    """Seconds a cache hit spends on the source at `root` (its identity, source_memo.py) and seconds
    decode() takes (reading it as a miss would)."""
    from .features.source_memo import source_identity
    t = time.perf_counter()
    source_identity(root, {})
    identity = time.perf_counter() - t
    t = time.perf_counter()
    decode()
    return {"identity_s": identity, "decode_s": time.perf_counter() - t}


def tarball_identity_seconds(path: str, n_images: int) -> dict:
    """The same for the official python batches as one .tar.gz of n_images random images (a sixth in
    test_batch): its identity (the archive's stat) against reading, checking and fingerprinting them."""
    import tarfile
    from .features.fingerprint import fingerprint
    from .features.sources import open_dataset
    from .features.synthetic import write_cifar_batches
    per, folder = n_images // 6, path + ".d"
    write_cifar_batches(folder, 5 * per, per)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(os.path.join(folder, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    shutil.rmtree(folder)
    return {"images": 6 * per,
            **identity_against_decoding(path, lambda: fingerprint(open_dataset("cifar10", path, ("train", "test"), None)))}


def _blas(step: dict) -> str:
    """': openblas 0.3.31.188.0, Haswell kernels, OPENBLAS_CORETYPE=Haswell in the environment', or '' if unknown."""
    b = step.get("blas") or {}
    if not b.get("kernels"):
        return ""
    set_by = f", {CORETYPE}={b['coretype_env']} in the environment" if b.get("coretype_env") else ""
    return f": {b['library']} {b['version']}, {b['kernels']} kernels{set_by}"


def _own_kernels(s2: dict, gflops: float) -> str:
    """'; 0.63 with the kernels OpenBLAS picks here itself (SkylakeX)', where the environment chose others."""
    own = s2.get("step_products_own_kernels")
    if not own:
        return ""
    return f"; {own['gflops'] / gflops:.2f} with the kernels OpenBLAS picks here itself ({own['blas']['kernels']})"


def rows(s2: dict, gflops: float) -> list:
    """The stage-two rows of bench's table."""
    def against_floor(t):
        return f"{_split(t)}; train / floor {t['train_s'] / t['floor_s']:.1f}x (floor {t['floor_s']:.1f} s)"
    out = [(f"train-head softmax, 20 epochs, {s2['rows']:,} x {s2['dim']:,}: wall (start-up / load / train)",
            against_floor(s2["softmax"]), "<= 4 s, <= 3x"),
           (f"train-head softmax, {s2['rows']:,} x {s2['conv_dim']:,} float16 (block5_pool flattened at 224)",
            against_floor(s2["softmax_conv"]), "<= 20 s, <= 3x")]
    if "softmax_views" in s2:
        out.append((f"train-head softmax, {s2['rows']:,} images x {VIEWS} views x {VIEW_DIM:,} float16",
                    against_floor(s2["softmax_views"]) + f"; a cache's first load verifies it: "
                    f"+{s2['softmax_views']['first_load_s']:.1f} s", "<= 30 s, <= 3x"))
    sweep = s2["sweep24"]
    out += [("train-head logreg: wall (start-up / load / train)", _split(s2["logreg"]), "< 60 s"),
            ("sweep, 24 softmax configurations: wall / one configuration; training at the matmul rate",
             f"{sweep['wall_s']:.1f} s / {sweep['wall_s'] / s2['softmax']['wall_s']:.1f}x; "
             f"{sweep['flops'] / sweep['train_s'] / 1e9 / gflops:.2f}", ">= 0.7"),
            ("the matmul library (NumPy's BLAS{}) on one step's products of a sweep group ({:,} rows x {:,} x {} "
             "outputs, forward and weight gradient), at the matmul rate".format(_blas(s2["step_products"]),
                                                                             *s2["step_products"]["shape"]),
             f"{s2['step_products']['gflops'] / gflops:.2f}" + _own_kernels(s2, gflops), "")]
    if "c_search" in s2:
        sel = s2["c_search"]["selection"]
        fits = len(sel["curve"])
        out.append((f"logreg --C auto, {int(s2['rows'] * (1 - VAL_FRACTION)):,} x {SEARCH_DIM:,}: search "
                    "(fits, s per fit) / refit and the rest", f"{fits * sel['seconds_per_fit']:.0f} s ({fits}, "
                    f"{sel['seconds_per_fit']:.1f}) / {s2['c_search']['wall_s'] - fits * sel['seconds_per_fit']:.0f} s",
                    "search <= 120 s"))
    if "source_identity" in s2:
        s = s2["source_identity"]
        out.append((f"a cache hit's source, {s['files']:,}-file image tree: identity / decoding it",
                    f"{s['identity_s']:.2f} s / {s['decode_s']:.1f} s", "hit <= 2 s"))
    if "tarball_identity" in s2:
        s = s2["tarball_identity"]
        out.append((f"a cache hit's source, the python batches of {s['images']:,} images as a .tar.gz: identity / "
                    "decoding it", f"{s['identity_s'] * 1e3:.1f} ms / {s['decode_s']:.1f} s", "hit <= 2 s"))
    return out


def _split(t: dict) -> str:
    return f"{t['wall_s']:.1f} s ({t['startup_s']:.1f} / {t['load_s']:.1f} / {t['train_s']:.1f})"
