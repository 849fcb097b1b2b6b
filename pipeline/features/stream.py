"""Runner for stage one: reader -> view/upscale workers -> model -> writer, each phase timed.

`extract_range` streams any contiguous range of a split: worker threads read and upscale batches
ahead of the model through a bounded window, a writer thread saves finished batches, so decoding,
upscaling and writing overlap the forward pass and memory stays bounded by the window.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .preprocess import upscale
from .views import render

PREFETCH = 4      # batches read and upscaled ahead of the model
WORKERS = max(2, min(8, os.cpu_count() or 1))   # read/upscale threads, one per core (cv2 releases the GIL)
WRITE_QUEUE = 8   # finished batches waiting for the writer


class BackgroundWriter:
    """Writer contract: `write(a, b, features)` returns at once; `flush()` waits until all are saved."""

    def __init__(self, save):
        self.save, self.error, self.seconds = save, None, 0.0
        self.queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                t = time.perf_counter()
                try:
                    self.save(*item)
                except BaseException as e:  # noqa: BLE001 - handed to the caller at the next write/flush
                    self.error = e
                self.seconds += time.perf_counter() - t

    def write(self, a, b, features):
        if self.error:
            raise self.error
        self.queue.put((a, b, features))

    def flush(self):
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def preparer(image_size: int, interpolation: str, views: list | None = None, shift_range: float = 0.0,
             views_seed: int = 0, split: str = "train"):
    """The reader-side step for a batch: (images, first row) -> the model's input: N x S x S x 3, or
    K x N x S x S x 3 with K > 1 views (each view rendered on the small image, then upscaled)."""
    if not views or list(views) == ["orig"]:
        return lambda images, first_row: upscale(images, image_size, interpolation)

    def prepare(images, first_row):
        rendered = render(images, views, shift_range, views_seed, split, first_row)
        return np.stack([upscale(v, image_size, interpolation) for v in rendered])
    return prepare


def extract_range(split, start: int, stop: int, model, writer, *, batch_size: int, prepare, desc: str = "",
                  quiet: bool = False, workers: int = WORKERS) -> dict:
    """Run images [start, stop) of `split`, made ready by `prepare` (see preparer) in `workers` threads,
    through `model` into `writer`; return phase timings."""
    bounds = [(a, min(a + batch_size, stop)) for a in range(start, stop, batch_size)]
    timings = {"read_upscale_s": 0.0, "wait_input_s": 0.0, "model_s": 0.0, "write_s": 0.0}
    lock = threading.Lock()

    def load(a, b):
        t = time.perf_counter()
        x = prepare(split.read(a, b), a)
        with lock:
            timings["read_upscale_s"] += time.perf_counter() - t
        return x

    t0 = time.perf_counter()
    bar = tqdm(total=stop - start, desc=desc, unit="img", disable=quiet, smoothing=0.1, dynamic_ncols=True)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            todo, window = iter(bounds), deque()
            for a, b in todo:
                window.append((a, b, pool.submit(load, a, b)))
                if len(window) >= max(PREFETCH, 2 * workers):
                    break
            while window:
                a, b, future = window.popleft()
                t = time.perf_counter()
                x = future.result()
                timings["wait_input_s"] += time.perf_counter() - t
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((*nxt, pool.submit(load, *nxt)))
                t = time.perf_counter()
                features = model(x)
                timings["model_s"] += time.perf_counter() - t
                writer.write(a, b, features)
                bar.update(b - a)
    finally:
        bar.close()
        writer.flush()  # keep every batch the model finished, even on Ctrl-C
    timings["write_s"] = getattr(writer, "seconds", 0.0)
    timings["total_s"] = time.perf_counter() - t0
    timings["images"] = stop - start
    return timings
