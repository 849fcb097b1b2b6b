"""Stage two's kernels as every run trains with them: loaded from Numba's cache, never compiled by the run itself.

A process that compiles kernels.py runs other machine code than the code it leaves in the cache: Numba optimises
a parallel kernel's body on its own, runs that, and caches the body as it is optimised again once linked into
its caller. With fastmath the two can add sums in another order: kernels._step_rows' do (a 10 x 10,752 float16 head's
weights differ in their last bits after two epochs), _step_chunks' and the other kernels' happened not to.
So a run that compiled the kernels itself would give other numbers, at float rounding, than every later run of
the same command. `ensure_cached` fills a cold cache in a child process first (`python -m pipeline.heads.kernels`,
as `make kernels` does), and the run then loads what every later run loads. Training (joint.py) and evaluation
(linear.logits) call it before their kernel: the two that run float sums under fastmath.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time

import numba

from .config import PROGRESS
from .kernels import FEATURE_DTYPES

log = logging.getLogger(__name__)


def _compiled_here(kernel, X) -> bool:
    """Whether this process already holds `kernel` for features like X (loaded, or compiled: either way it runs
    that from now on)."""
    want = numba.typeof(X)
    return any(sig[0] == want for sig in kernel.signatures)


def cached(kernel, X) -> bool:
    """Whether Numba's cache holds `kernel` for features like X (their array type) for this machine's CPU and
    kernels.py as it is; True where caching is off (nothing to fill)."""
    index_file = getattr(getattr(kernel, "_cache", None), "_cache_file", None)
    if index_file is None:
        return True
    magic, want = kernel.targetctx.codegen().magic_tuple(), numba.typeof(X)
    return any(key[1] == magic and key[0][0] == want for key in index_file._load_index())


def ensure_cached(kernel, X) -> None:
    """Before this process first runs `kernel` (one of those kernels.py compiles with fastmath and takes features
    first: train_epoch, affine) on features like X (linear.kernel_view's array): a cold cache is filled by a child
    process, once for this machine (about a minute for X's dtype: every kernel), so this run loads the kernels as
    later runs will. Where that cannot be done (the child fails, the cache cannot be written) the run compiles
    them itself, as before, and says so."""
    if _compiled_here(kernel, X) or cached(kernel, X):
        return
    dtype = next(name for name, as_taken in FEATURE_DTYPES.items() if X.dtype == as_taken)
    PROGRESS.info(f"compiling stage two's kernels for {dtype} features, once for this machine (about a minute) ...")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.heads.kernels", dtype], capture_output=True, text=True)
    if done.returncode == 0 and cached(kernel, X):
        PROGRESS.info(f"compiled in {time.perf_counter() - t0:.0f} s; cached for later runs")
        return
    why = (done.stderr.strip().splitlines() or ["its cache was not written"])[-1]
    log.warning(f"could not cache stage two's kernels ({why}); this run compiles them itself, and its numbers "
                "may differ at float rounding from a run that loads them (`make kernels` caches them)")
