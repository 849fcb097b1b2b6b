"""`python -m pipeline bench`: throughput against the machine's limit and the notebook's approach.

Stage one runs in this process on the same images at each precision; stage two (bench_heads.py)
runs the real commands as fresh processes (start-up included) on synthetic caches. Absolute
times drift on shared machines, so the table leads with ratios from one run. Writes
data/bench/<timestamp>.json, .md and .png (plot); `--update-readme` puts the table into README.md.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time

import numpy as np

from . import bench_heads
from .bench_heads import median_time
from .durable import free_bytes, make_folder, write_text
from .errors import PipelineError, SettingError
from .features import FeatureConfig
from .features.backbone import build_backbone
from .features.config import MAX_IMAGE_SIZE
from .features.precision import cpuinfo_field, resolve_precision
from .features.synthetic import write_cifar_batches
from .keras_env import keras_backend_name
from .text_table import file_size

log = logging.getLogger(__name__)

# --- defaults: finish in under 10 minutes on a 2-core CPU; --full runs larger --------------------
IMAGES = 64            # images per stage-one measurement (two batches of 32)
FULL_IMAGES = 256
BATCH = 32             # stage-one batch size
IMAGE_SIZE = 224       # upscale target, as the notebook
REPEATS = 3            # repeats of the small timings (medians are reported)
HEAD_ROWS, HEAD_TEST, HEAD_DIM = 50_000, 10_000, 4096   # stage-two synthetic cache
CONV_DIM = 25_088      # and one as wide as block5_pool flattened at 224 px, stored as float16
MIN_HEAD_ROWS = 200    # its fewest rows: the heads' stratified validation split needs a few of each of 10 classes
NOTEBOOK = {"epochs": 20, "train": 12_500, "val": 500, "cifar10_images": 60_000}
# -----------------------------------------------------------------------------------------------------


def matmul_gflops(dtype: str, repeats: int, n: int = 2048) -> float:
    import keras
    a = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)

    def run():
        keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.sum(keras.ops.matmul(a, a)), "float32"))
    return 2 * n ** 3 / median_time(run, repeats) / 1e9


def memory_gbps(repeats: int) -> float:
    a = np.ones(32 * 2 ** 20, np.float32)  # 128 MiB
    b = np.empty_like(a)
    return 2 * a.nbytes / median_time(lambda: np.copyto(b, a), repeats) / 1e9


def model_flops(model) -> int:
    """FLOPs (2 x multiply-adds) per image of the model's Conv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += 2 * h * w * c_out * kh * kw * c_in
        elif kind == "Dense":
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def stage_one(n: int, size: int, repeats: int, tmp: str) -> dict:
    from .features.build import BuiltBackbone
    from .features.extract import extract
    from .features.plan import plan
    from .features.preprocess import preprocess
    from .features.sources import open_dataset
    data = write_cifar_batches(os.path.join(tmp, "cifar"), n)
    images = open_dataset("cifar10", data, ("train",), None).splits["train"].images
    x = preprocess(images[:BATCH], size, "cubic")
    out = {"auto_precision": resolve_precision("auto", memo_dir=os.path.join(tmp, "probe"))}   # measured afresh
    for prec in ("float32", "bfloat16"):
        model = build_backbone([("fc2", None)], size, "random", 0, prec)
        out.setdefault("flops_per_image", model_flops(model))
        bare = median_time(lambda: model.predict_on_batch(x), repeats)
        out[f"bare_{prec}"] = BATCH / bare
        cfg = FeatureConfig(data_dir=data, splits=("train",), weights="random", image_size=size, precision=prec,
                            batch_size=BATCH, cache_dir=os.path.join(tmp, f"cache-{prec}"))
        models = BuiltBackbone()
        models.get([plan(cfg)])  # build once outside the timing, as a long run amortises it
        t = time.perf_counter()
        extract(cfg, quiet=True, models=models)
        out[f"end_to_end_{prec}"] = n / (time.perf_counter() - t)
        if prec == "float32":
            import cv2
            from keras.applications.vgg19 import preprocess_input

            def notebook():  # the notebook: a Python loop of cv2.resize per image, then predict
                for a in range(0, n, BATCH):
                    batch = np.array([cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
                                      for img in images[a:a + BATCH]], dtype=np.float32)
                    model.predict(preprocess_input(batch), verbose=0)
            t = time.perf_counter()
            notebook()
            out["notebook_float32"] = n / (time.perf_counter() - t)
    return out


FEED_IMAGES = 8192     # images through the feeding path alone, per measurement
FEED_NEED = {128: 2000, 224: 1000}   # img/s per core the issue asks of it (16 cores: tens of thousands)


def feeding_path(n: int, sizes=(128, 224)) -> dict:
    """Stage one's feeding path alone (read CIFAR-size images, upscale with cubic, batch uint8 pixels,
    hand to the model, write) with a null model and a null writer, as extract runs it: images/s with
    one worker thread (= per core) and with one per core."""
    from .features.dataset import Split
    from .features.stream import WORKERS, BackgroundWriter, extract_range, preparer
    rng = np.random.default_rng(0)
    split = Split("train", np.zeros(n, np.int64), np.arange(n), images=rng.integers(0, 256, (n, 32, 32, 3), np.uint8))

    def null_model(x):
        return [np.zeros((len(x), 1), np.float16)]
    out = {"images": n, "workers": WORKERS, "need_per_core": FEED_NEED}
    for size in sizes:
        for workers in (1, WORKERS):
            t = extract_range(split, 0, n, null_model, BackgroundWriter(lambda a, b, f: None), batch_size=BATCH * 8,
                              prepare=preparer(size, "cubic"), quiet=True, workers=workers)
            out[f"{size}px_{workers}w"] = n / t["total_s"]
        out[f"per_core_{size}px"] = out[f"{size}px_1w"]
    return out


def table(r: dict) -> str:
    s1, s2 = r["stage_one"], r["stage_two"]
    auto = s1["auto_precision"] if s1["auto_precision"] != "float16" else "float32"
    roof32 = r["matmul_gflops"]["float32"] * 1e9 / s1["flops_per_image"]
    roof16 = r["matmul_gflops"]["bfloat16"] * 1e9 / s1["flops_per_image"]
    nb_hours = (NOTEBOOK["epochs"] * (NOTEBOOK["train"] + NOTEBOOK["val"])) / s1["notebook_float32"] / 3600
    ours_hours = (NOTEBOOK["cifar10_images"] / s1[f"end_to_end_{auto}"] + s2["softmax"]["wall_s"]) / 3600
    rows = [
        ("matmul rate, float32 / bfloat16", f"{r['matmul_gflops']['float32']:.0f} / {r['matmul_gflops']['bfloat16']:.0f} GFLOP/s", ""),
        ("VGG19 to fc2, per image (counted from the layers)", f"{s1['flops_per_image'] / 1e9:.1f} GFLOP", ""),
        ("roofline, float32 / bfloat16", f"{roof32:.2f} / {roof16:.2f} img/s", ""),
        ("bare forward pass, float32 / bfloat16", f"{s1['bare_float32']:.2f} / {s1['bare_bfloat16']:.2f} img/s", ""),
        ("stage one end to end, float32 / bfloat16", f"{s1['end_to_end_float32']:.2f} / {s1['end_to_end_bfloat16']:.2f} img/s", ""),
        ("notebook approach (cv2 loop + predict), float32", f"{s1['notebook_float32']:.2f} img/s", ""),
        ("end to end / bare, float32", f"{s1['end_to_end_float32'] / s1['bare_float32']:.2f}", ">= 0.9"),
        ("bare / roofline, float32", f"{s1['bare_float32'] / roof32:.2f}", ">= 0.85"),
        ("bfloat16 / float32, end to end", f"{s1['end_to_end_bfloat16'] / s1['end_to_end_float32']:.2f}", ""),
        (f"auto (= {auto}) / the faster of float32 and bfloat16, end to end",
         f"{s1[f'end_to_end_{auto}'] / max(s1['end_to_end_float32'], s1['end_to_end_bfloat16']):.2f}", ">= 0.97"),
        *feed_rows(r.get("feeding_path")),
        (f"end to end (auto = {auto}) / notebook approach", f"{s1[f'end_to_end_{auto}'] / s1['notebook_float32']:.2f}", ">= 1.8"),
        *bench_heads.rows(s2, r["matmul_gflops"]["float32"]),
        ("notebook's experiment (20 x 12,500 + 20 x 500 through VGG19) at its rate", f"{nb_hours:.1f} h", ""),
        ("this pipeline: all 60,000 CIFAR-10 images once + one head", f"{ours_hours:.1f} h "
         f"({nb_hours / ours_hours:.1f}x less)", ""),
    ]
    l2 = f", L2 {s2['l2_kib']:,} KiB a core" if "l2_kib" in s2 else ""      # where the heads' kernels split
    head = f"Machine: {r['machine']}{l2}; {r['date']}; backend {r['backend']}; {s1['images']} images at {s1['image_size']}px, batch {BATCH}.\n\n"
    lines = ["| measure | value | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return head + "\n".join(lines) + "\n"


def feed_rows(f: dict | None) -> list:
    """The feeding path's table rows (bench and gpu-check)."""
    if not f:
        return []
    w = f["workers"]
    return [(f"feeding path alone (null model), {size} px: per core / {w} workers",
             f"{f['per_core_%dpx' % size]:,.0f} / {f['%dpx_%dw' % (size, w)]:,.0f} img/s",
             f">= {f['need_per_core'][size]:,} per core") for size in (128, 224) if f"per_core_{size}px" in f]


def machine() -> str:
    """This machine in one line: the CPU's model name and, where /proc/cpuinfo gives them, its family and model
    ("AMD EPYC" names a Zen 4 and a Zen 5 alike), the cores and the memory."""
    cpu = cpuinfo_field("model name") or platform.processor() or platform.machine()
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    if family and model:
        cpu += f" (family {family}, model {model})"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB"


def check_settings(n: int, image_size: int, head_rows: int, head_dim: int, conv_dim: int, out_dir: str, full: bool):
    """Refuse, before minutes of measuring, what bench could not run or write at its end: one line each."""
    if n < BATCH:
        raise SettingError("images", f"expected at least {BATCH} (one batch), got {n}", "bench")
    if not 32 <= image_size <= MAX_IMAGE_SIZE:
        raise SettingError("image_size", f"expected 32..{MAX_IMAGE_SIZE}, got {image_size}", "bench")
    if head_rows < MIN_HEAD_ROWS:
        raise SettingError("head_rows", f"expected at least {MIN_HEAD_ROWS} (a stratified validation split of 10 "
                           f"classes), got {head_rows}", "bench")
    for name, width in (("head_dim", head_dim), ("conv_dim", conv_dim)):
        if width < 1:
            raise SettingError(name, f"expected a width of at least 1, got {width}", "bench")
    rows = head_rows + head_rows // 5             # a synthetic cache's train and test rows (bench_heads.heads)
    widths = [head_dim * 4, conv_dim * 2] + ([bench_heads.VIEWS * bench_heads.VIEW_DIM * 2,
                                              bench_heads.SEARCH_DIM * 2] if full else [])
    need, free = rows * max(widths), free_bytes(tempfile.gettempdir())     # one cache at a time
    if need > free:
        raise SettingError("head_rows", f"{head_rows:,} rows make a {file_size(need)} synthetic cache and "
                           f"{tempfile.gettempdir()} has {file_size(free)} free; lower it", "bench")
    make_folder(out_dir, "out_dir", "bench", will_write=True)      # where the results go at the end


def run(images: int | None = None, full: bool = False, image_size: int = IMAGE_SIZE, head_rows: int = HEAD_ROWS,
        head_dim: int = HEAD_DIM, conv_dim: int = CONV_DIM, out_dir: str = "data/bench", readme: bool = False):
    """Measure, write <out_dir>/<timestamp>.json and .md, print the table (and the .json path last)."""
    n = images if images is not None else FULL_IMAGES if full else IMAGES
    repeats = REPEATS * (2 if full else 1)
    check_settings(n, image_size, head_rows, head_dim, conv_dim, out_dir, full)
    tmp = tempfile.mkdtemp(prefix="pipeline-bench-")
    try:
        log.info(f"bench: stage one on {n} images at {image_size}px ...")
        r = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "backend": keras_backend_name(), "settings": {"images": n, "repeats": repeats, "full": full, "image_size": image_size,
                                                         "head_rows": head_rows, "head_dim": head_dim,
                                                         "conv_dim": conv_dim},
             "matmul_gflops": {d: matmul_gflops(d, repeats) for d in ("float32", "bfloat16")},
             "memory_gbps": memory_gbps(repeats)}
        r["stage_one"] = {"images": n, "image_size": image_size, **stage_one(n, image_size, repeats, tmp)}
        r["feeding_path"] = feeding_path(FEED_IMAGES * (2 if full else 1))
        log.info("bench: stage two (train-head, logreg, 24-configuration sweep, a float16 conv-width cache"
                 + (", 6 views, the C search, a 60,000-file tree" if full else "") + ") ...")
        r["stage_two"] = bench_heads.heads(head_rows, head_dim, conv_dim, tmp, r["matmul_gflops"]["float32"],
                                           r["memory_gbps"], full)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md = table(r)
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for ext, text in (("json", json.dumps(r, indent=1, default=str)), ("md", md)):
        write_text(os.path.join(out_dir, f"{stamp}.{ext}"), text)
    plot(os.path.join(out_dir, f"{stamp}.png"), r)
    if readme:
        update_readme("README.md", md)
    log.info(md)
    return os.path.join(out_dir, f"{stamp}.json")


HEAD_TARGETS = (("softmax", "softmax {rows:,} x {dim:,}", 4),         # plot: each head row, its label and target (s)
                ("softmax_conv", "softmax {rows:,} x {conv_dim:,} f16", 20),
                ("softmax_views", "softmax {views_rows:,} x {view_dim:,} f16 (views)", 30),
                ("logreg", "logreg {rows:,} x {dim:,}", 60))


def plot(path: str, r: dict):
    """The run as a picture: stage one's images/s per dtype against the roofline and the notebook; each
    head's wall time split into its phases, beside its target (red) and its training floor (x)."""
    from .heads.runs import png_figure
    s1, s2 = r["stage_one"], r["stage_two"]
    with png_figure(path, figsize=(14, 5), layout="tight") as fig:
        one, two = fig.subplots(1, 2)
        bars = [("roofline", {d: r["matmul_gflops"][d] * 1e9 / s1["flops_per_image"] for d in ("float32", "bfloat16")}),
                ("bare forward pass", {d: s1[f"bare_{d}"] for d in ("float32", "bfloat16")}),
                ("stage one end to end", {d: s1[f"end_to_end_{d}"] for d in ("float32", "bfloat16")}),
                ("notebook approach", {"float32": s1["notebook_float32"]})]
        for i, (label, rates) in enumerate(bars):
            for j, (dtype, rate) in enumerate(rates.items()):
                one.barh(i + 0.2 * (1 - 2 * j), rate, height=0.4, color=("tab:blue", "tab:orange")[j],
                         label=dtype if i == 0 else None)
                one.text(rate, i + 0.2 * (1 - 2 * j), f" {rate:.2f}", va="center", fontsize=8)
        one.margins(x=0.12)                                   # room for the last value's label
        one.set_yticks(range(len(bars)), [b[0] for b in bars])
        one.invert_yaxis()
        one.set_xlabel("images/s")
        one.set_title(f"stage one, {s1['images']} images at {s1['image_size']} px (auto = {s1['auto_precision']})")
        one.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        sizes = {**s2, "views_rows": s2["rows"] * bench_heads.VIEWS, "view_dim": bench_heads.VIEW_DIM}
        heads = [(key, label.format(**sizes), target) for key, label, target in HEAD_TARGETS if key in s2]
        for i, (key, _, target) in enumerate(heads):
            t, left = s2[key], 0.0
            rest = t["wall_s"] - t["startup_s"] - t["load_s"] - t["train_s"]
            for phase, seconds, colour in (("start-up", t["startup_s"], "tab:gray"), ("load", t["load_s"], "tab:olive"),
                                           ("train", t["train_s"], "tab:blue"), ("evaluate, write", rest, "tab:cyan")):
                two.barh(i, seconds, left=left, color=colour, label=phase if i == 0 else None)
                left += max(seconds, 0.0)
            two.plot([target, target], [i - 0.4, i + 0.4], color="red", lw=2, label="target" if i == 0 else None)
            if "floor_s" in t:
                two.plot(t["startup_s"] + t["load_s"] + t["floor_s"], i, "kx", ms=8,
                         label="training at its floor" if i == 0 else None)
            two.text(t["wall_s"], i, f" {t['wall_s']:.1f} s", va="center", fontsize=8)
        two.margins(x=0.12)
        two.set_yticks(range(len(heads)), [h[1] for h in heads])
        two.invert_yaxis()
        two.set_xlabel("seconds, wall (a fresh process)")
        two.set_title("stage two: train-head, 20 epochs")
        two.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
        fig.suptitle(f"{r['machine']}; {r['date']}; backend {r['backend']}")


def update_readme(path: str, md: str):
    with open(path) as f:
        text = f.read()
    new, count = re.subn(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", lambda m: m[1] + md + m[2], text, flags=re.S)
    if not count:
        raise PipelineError(f"{path}: no <!-- bench:start --> / <!-- bench:end --> markers; add them where the table goes")
    write_text(path, new)
