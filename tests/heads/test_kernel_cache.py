import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.heads import kernel_cache, kernels
from pipeline.heads.linear import kernel_view

FIT = """
import hashlib, logging, numpy as np
from pipeline.heads.softmax import SoftmaxHead
from pipeline.heads.kernels import train_epoch
logging.basicConfig(level=logging.INFO, format="%(message)s")
rng = np.random.default_rng(0)
X, y = rng.standard_normal((400, 10752)).astype(np.float16), np.arange(400) % 10
head = SoftmaxHead(epochs=2, batch_size=100).fit(X, y)
print(hashlib.sha256(head.coef_.tobytes()).hexdigest(), sum(train_epoch.stats.cache_misses.values()))
"""


def test_a_run_on_a_cold_cache_trains_with_the_code_later_runs_load(tmp_path):
    """The first run (nothing cached: a fresh install, kernels.py changed) fills the cache in a child process and
    loads from it, so it gives the same weights to the bit as the next run of the same fit. A 10 x 10,752 float16
    head trains by rows (_step_rows), whose code compiled in the process rounds otherwise than its cached code."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first, again = (subprocess.run([sys.executable, "-c", FIT], env=env, check=True, capture_output=True, text=True)
                    for _ in range(2))
    assert "compiling stage two's kernels for float16 features" in first.stderr
    assert "compiling" not in again.stderr
    (digest_1, compiled_1), (digest_2, compiled_2) = first.stdout.split(), again.stdout.split()
    assert compiled_1 == compiled_2 == "0"            # neither process compiled train_epoch itself
    assert digest_1 == digest_2


PREDICT = """
import hashlib, logging, numpy as np
from pipeline.heads.kernels import affine
from pipeline.heads.linear import logits
logging.basicConfig(level=logging.INFO, format="%(message)s")
rng = np.random.default_rng(0)
X = rng.standard_normal((300, 4096)).astype(np.float32)
z = logits(X, rng.standard_normal((4096, 10)).astype(np.float32), np.zeros(10, np.float32))
print(hashlib.sha256(z.tobytes()).hexdigest(), sum(affine.stats.cache_misses.values()))
"""


def test_evaluation_on_a_cold_cache_loads_the_kernel_too(tmp_path):
    """Logits (kernels.affine, also fastmath) in a process that trains nothing, e.g. an ensemble of saved runs on a
    machine that never compiled the kernels: filled by the child, loaded, the same to the bit as the next run's."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    first, again = (subprocess.run([sys.executable, "-c", PREDICT], env=env, check=True, capture_output=True, text=True)
                    for _ in range(2))
    assert "compiling stage two's kernels for float32 features" in first.stderr and "compiling" not in again.stderr
    assert first.stdout.split() == again.stdout.split()
    assert first.stdout.split()[1] == "0"


def test_a_process_that_holds_the_kernels_already_starts_no_child(monkeypatch):
    from pipeline.heads.softmax import SoftmaxHead
    X = np.random.default_rng(0).random((40, 16), np.float32)
    SoftmaxHead(epochs=1, batch_size=8).fit(X, np.arange(40) % 3).predict(X)    # both loaded (or compiled) by now
    monkeypatch.setattr(kernel_cache, "cached", lambda kernel, X: False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("started a child"))
    kernel_cache.ensure_cached(kernels.train_epoch, kernel_view(X))
    kernel_cache.ensure_cached(kernels.affine, kernel_view(X))


def test_where_the_cache_cannot_be_filled_the_run_compiles_itself_and_says_why(monkeypatch, caplog):
    X = kernel_view(np.zeros((4, 8), np.float16))
    calls = []
    monkeypatch.setattr(kernel_cache, "_compiled_here", lambda kernel, X: False)
    monkeypatch.setattr(kernel_cache, "cached", lambda kernel, X: False)

    def child(cmd, **kwargs):
        calls.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nPermissionError: [Errno 13] read-only\n")
    monkeypatch.setattr(kernel_cache.subprocess, "run", child)
    with caplog.at_level("WARNING", logger="pipeline.heads.kernel_cache"):
        kernel_cache.ensure_cached(kernels.train_epoch, X)
    assert calls == [["-m", "pipeline.heads.kernels", "float16"]]
    [record] = caplog.records
    assert "PermissionError: [Errno 13] read-only" in record.message and "compiles them itself" in record.message
