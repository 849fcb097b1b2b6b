"""predict's end-to-end model agrees with the head applied to the cached features; run folders
(which may come from anyone) are read as numbers only."""
import collections
import json
import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import SMALL, is_one_line_error, rewrite_zip, run_captured, run_cli, set_layer_class, vouch

from pipeline.features.cache import load_cache
from pipeline.heads.keras_file import head_model, read_head


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from conftest import write_image_folders
    root = tmp_path_factory.mktemp("p")
    data = write_image_folders(str(root / "imgs"), per_class=8)
    assert run_cli("features", "--data-dir", data, "--cache-dir", root / "c", *SMALL) == 0
    cache = [os.path.join(root / "c", f) for f in os.listdir(root / "c") if f.endswith(".h5")][0]
    return root, data, cache


def train(root, cache, head, name, *extra):
    args = ["--head", head, "--epochs", "3", "--val-fraction", "0.2"] if head == "softmax" else ["--head", head]
    assert run_cli("train-head", "--cache", cache, "--runs-dir", root / "runs", "--name", name, *args, *extra) == 0
    return str(root / "runs" / name)


@pytest.mark.parametrize("head,normalize,hidden", [("softmax", "none", 0), ("logreg", "none", 0),
                                                   ("softmax", "sqrt-l2", 0), ("logreg", "l2", 0),
                                                   ("softmax", "sqrt-l2", 8)])
def test_predict_agrees_with_head_on_cached_features(cached, capsys, head, normalize, hidden):
    """Also with the normalize step and a hidden layer: head.keras, predict's model and the export all apply them."""
    root, data, cache = cached
    more = ("--hidden", str(hidden)) if hidden else ()
    run = train(root, cache, head, f"run-{head}-{normalize}-{hidden}", "--normalize", normalize, *more)
    saved = read_head(os.path.join(run, "head.keras"))
    assert (saved["normalize"] or "none") == normalize and (saved["hidden_kernel"] is not None) == bool(hidden)
    X, y, meta = load_cache(cache)["test"]
    paths = [os.path.join(data, i) for i in meta["ids"]]
    capsys.readouterr()
    assert run_cli("predict", "--run", run, *paths, "--export", root / f"{head}-{normalize}-{hidden}.keras") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(paths)
    want = np.asarray(head_model(read_head(os.path.join(run, "head.keras"))).predict(X, verbose=0))
    names = meta["class_names"]
    for line, p, w in zip(lines, paths, want):
        path, cls, prob = line.split("\t")
        assert path == p and cls == names[int(w.argmax())]
        assert float(prob) == pytest.approx(float(w.max()), abs=2e-4)
    import keras
    as_saved = keras.saving.load_model(os.path.join(run, "head.keras"))           # a real Keras file
    np.testing.assert_allclose(np.asarray(as_saved.predict(X, verbose=0)), want, atol=1e-6)
    exported = keras.saving.load_model(str(root / f"{head}-{normalize}-{hidden}.keras"))
    from pipeline.features.images import decode_image
    from pipeline.features.preprocess import upscale
    x = upscale([decode_image(p) for p in paths], 32, "cubic").astype(np.float32)
    np.testing.assert_allclose(np.asarray(exported.predict(x, verbose=0)), want, atol=1e-5)   # weights kept


def test_predict_an_ensemble_is_the_mean_of_its_heads(cached, capsys):
    """An ensemble's run folder (member files, no head.keras) is a run to predict: the mean of its
    members' probabilities, and its export a Keras model that computes the same."""
    root, data, cache = cached
    runs = [train(root, cache, "softmax", "ens-soft"), train(root, cache, "logreg", "ens-logreg", "--val-fraction", "0.2")]
    code, out, err = run_captured(capsys, "ensemble", "--run", runs[0], "--run", runs[1], "--cache", cache,
                                  "--runs-dir", root / "runs", "--name", "ens", "--quiet")
    assert code == 0, err
    X, y, meta = load_cache(cache)["test"]
    paths = [os.path.join(data, i) for i in meta["ids"]]
    want = np.mean([head_model(read_head(os.path.join(r, "head.keras"))).predict(X, verbose=0) for r in runs], axis=0)
    code, lines, err = run_captured(capsys, "predict", "--run", out[-1], *paths, "--export", root / "ens.keras")
    assert code == 0 and len(lines) == len(paths), err
    for line, w in zip(lines, want):
        _, cls, prob = line.split("\t")
        assert cls == meta["class_names"][int(w.argmax())] and float(prob) == pytest.approx(float(w.max()), abs=2e-4)
    import keras
    from pipeline.features.images import decode_image
    from pipeline.features.preprocess import upscale
    x = upscale([decode_image(p) for p in paths], 32, "cubic").astype(np.float32)
    exported = keras.saving.load_model(str(root / "ens.keras"))
    np.testing.assert_allclose(np.asarray(exported.predict(x, verbose=0)), want, atol=1e-5)
    os.remove(os.path.join(out[-1], "member_1.keras"))            # a member file missing: one line, nothing built
    code, lines, err = run_captured(capsys, "predict", "--run", out[-1], *paths)
    assert is_one_line_error(code, err, "missing member_1.keras") and not lines


def test_logreg_head_equals_scikit_learn_also_with_a_class_missing_from_train(tmp_path):
    """Train has cat, dog, frog; the cache's classes also include bird: the saved head gives each class
    its own column, so the class printed is the class the head means (and bird gets probability 0)."""
    from pipeline.heads import LogRegHead
    from pipeline.heads.keras_file import write_head
    from pipeline.features.synthetic import make_features
    X, y = make_features(400, 16, 4, seed=3, separation=2.0)
    keep = y != 1                                          # class 1 ("bird") absent from training
    head = LogRegHead(max_iter=300, classes=range(4)).fit(X[keep], y[keep])
    write_head(str(tmp_path / "h.keras"), **head.head_file())
    got = np.asarray(head_model(read_head(str(tmp_path / "h.keras"))).predict(X, verbose=0))
    sk = head.model_.predict_proba(X)
    assert list(head.model_.classes_) == [0, 2, 3] and got.shape == (400, 4)
    np.testing.assert_allclose(got[:, [0, 2, 3]], sk, atol=1e-4)
    assert got[:, 1].max() < 1e-30 and np.array_equal(got.argmax(1), head.model_.classes_[sk.argmax(1)])
    Xb, yb = X[y >= 2], y[y >= 2]                         # binary: two classes present, of four
    two = LogRegHead(classes=range(4)).fit(Xb, yb)
    write_head(str(tmp_path / "b.keras"), **two.head_file())
    got = np.asarray(head_model(read_head(str(tmp_path / "b.keras"))).predict(Xb, verbose=0))
    np.testing.assert_allclose(got[:, [2, 3]], two.model_.predict_proba(Xb), atol=1e-4)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def lambda_head(path):
    """A .keras whose config asks for a Lambda layer (code) in place of the Dense."""
    rewrite_zip(path, lambda members: set_layer_class(members, -1, "Lambda"))


def test_run_folder_never_runs_code(cached, tmp_path, capsys, monkeypatch):
    root, data, cache = cached
    run = shutil.copytree(train(root, cache, "logreg", "run-evil"), tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    os.remove(run / "head.keras")
    pickle.dump(_Evil(), open(run / "head.joblib", "wb"))            # an older version's pickle, doctored
    code, _, err = run_captured(capsys, "predict", "--run", run, os.path.join(data, "test", "cat", "000.png"))
    assert code == 1 and "head.joblib is an older version's pickle: never loaded" in err
    assert not os.path.exists(tmp_path / "PWNED")
    shutil.copy(os.path.join(root, "runs", "run-evil", "head.keras"), run / "head.keras")
    lambda_head(run / "head.keras")
    vouch(run)                                                       # the whole folder crafted: its digest too
    capsys.readouterr()
    code, _, err = run_captured(capsys, "predict", "--run", run, os.path.join(data, "test", "cat", "000.png"))
    assert is_one_line_error(code, err, "not a head this project writes")


def test_a_head_changed_after_its_run_wrote_it_is_not_used(cached, tmp_path, capsys):
    """A run records its head file's SHA-256; a head file that is another well-formed head of the same
    width (here another run's) is refused as changed, and so are digests that are not digests. A run
    that records none (written before runs recorded them) is read as before."""
    root, data, cache = cached
    image = os.path.join(data, "test", "cat", "000.png")
    run = shutil.copytree(train(root, cache, "logreg", "run-swap"), tmp_path / "r")
    other = train(root, cache, "softmax", "run-other")
    m = json.load(open(run / "metrics.json"))
    assert set(m["file_sha256"]) == {"head.keras"} and len(m["file_sha256"]["head.keras"]) == 64
    shutil.copy(os.path.join(other, "head.keras"), run / "head.keras")
    capsys.readouterr()
    code, out, err = run_captured(capsys, "predict", "--run", run, image)
    assert is_one_line_error(code, err, "head.keras: it changed after its run wrote it") and not out, err
    json.dump({**m, "file_sha256": {"head.keras": 7}}, open(run / "metrics.json", "w"))
    code, out, err = run_captured(capsys, "predict", "--run", run, image)
    assert is_one_line_error(code, err, "its file_sha256 in metrics.json is not an object of SHA-256 digests"), err
    json.dump({k: v for k, v in m.items() if k != "file_sha256"}, open(run / "metrics.json", "w"))   # an older run
    code, out, err = run_captured(capsys, "predict", "--run", run, image)
    assert code == 0 and len(out) == 1, err


@pytest.mark.parametrize("content,needle", [("not json", "metrics.json is not a run's (JSONDecodeError"),
                                            ("{}", "metrics.json is not a run's (KeyError")])
def test_metrics_that_is_not_a_runs(cached, tmp_path, capsys, content, needle):
    root, data, cache = cached
    run = shutil.copytree(train(root, cache, "logreg", f"run-m{len(content)}"), tmp_path / "r")
    (run / "metrics.json").write_text(content)
    capsys.readouterr()
    code, _, err = run_captured(capsys, "predict", "--run", run, os.path.join(data, "test", "cat", "000.png"))
    assert is_one_line_error(code, err, needle)


@pytest.mark.parametrize("name", ["metrics.json", "head.keras"])
def test_links_in_a_run_folder_are_not_followed(cached, tmp_path, capsys, name):
    """A crafted run folder's file that is a link (here to the very file it replaces) is refused, not read:
    a link could lead to any file this user can read."""
    root, data, cache = cached
    run = shutil.copytree(train(root, cache, "logreg", f"run-link-{name}"), tmp_path / "r")
    image = os.path.join(data, "test", "cat", "000.png")
    assert run_cli("predict", "--run", run, image) == 0
    os.replace(run / name, tmp_path / name)
    os.symlink(tmp_path / name, run / name)
    capsys.readouterr()
    code, out, err = run_captured(capsys, "predict", "--run", run, image)
    assert is_one_line_error(code, err, f"{name} is a link") and not out, err


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(cached, capsys, monkeypatch, tmp_path):
    """The folder exists but the file cannot be made in it (a read-only file system; /proc for root): one line,
    not a traceback, and no file, whole or partial."""
    import errno

    import keras
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-export")

    def read_only(self, path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(keras.Model, "save", read_only)
    capsys.readouterr()
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    code, out, err = run_captured(capsys, "predict", "--run", run, "--export", out_dir / "m.keras",
                                  os.path.join(data, "test", "cat", "000.png"))
    assert is_one_line_error(code, err, f"cannot write {out_dir / 'm.keras'} (Read-only file system)") and not out
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("args,needle", [(["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
                                         (["--export", "out.txt"], "--export out.txt: expected a path ending in .keras"),
                                         (["--export", "/nonexistent/m.keras"], "in an existing folder")])
def test_bad_options_fail_before_any_backbone_work(cached, capsys, monkeypatch, args, needle):
    root, data, cache = cached
    run = train(root, cache, "logreg", f"run-{args[1].replace('/', '_')}")
    monkeypatch.setattr("pipeline.predict.build_backbone", lambda *a, **k: pytest.fail("backbone built"))
    capsys.readouterr()
    code, _, err = run_captured(capsys, "predict", "--run", run, *args, os.path.join(data, "test", "cat", "000.png"))
    assert is_one_line_error(code, err, needle)


def test_predict_bad_inputs(cached, tmp_path, capsys):
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-bad")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert run_cli("predict", "--run", run, tmp_path / "bad.png") == 1
    assert "cannot read image" in capsys.readouterr().err
    assert run_cli("predict", "--run", run, tmp_path / "missing.png") == 1
    assert "no such file" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo.png")                                           # never opened: it would block
    assert run_cli("predict", "--run", run, tmp_path / "fifo.png") == 1
    assert f"image {tmp_path / 'fifo.png'}: not a regular file" in capsys.readouterr().err
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    assert run_cli("predict", "--run", run, tmp_path / "dangling.png") == 1
    assert f"image {tmp_path / 'dangling.png'}: no such file" in capsys.readouterr().err
    os.makedirs(tmp_path / "none" / "sub")
    (tmp_path / "none" / "notes.txt").write_text("x")
    os.symlink(os.path.join(data, "test", "cat", "000.png"), tmp_path / "none" / "link.png")
    assert run_cli("predict", "--run", run, tmp_path / "none") == 1          # no image file of its own
    assert f"folder {tmp_path / 'none'}: no image files in it" in capsys.readouterr().err
    os.remove(os.path.join(run, "head.keras"))
    assert run_cli("predict", "--run", run, tmp_path / "bad.png") == 1
    assert "missing head.keras" in capsys.readouterr().err
    assert run_cli("predict", "--run", tmp_path, tmp_path / "bad.png") == 1
    assert "no metrics.json" in capsys.readouterr().err


def test_a_folder_is_its_own_image_files_in_order(cached, tmp_path, capsys):
    """`predict --run R FOLDER`: the folder's image files, sorted, as if each were named; not a link (even to
    an image), not a sub-folder's files, not other files."""
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-folder")
    capsys.readouterr()
    cats = os.path.join(data, "test", "cat")
    named = sorted(os.path.join(cats, f) for f in os.listdir(cats))
    assert run_cli("predict", "--run", run, *named) == 0
    want = capsys.readouterr().out.strip().splitlines()
    folder = tmp_path / "cats"
    os.makedirs(folder / "sub")
    for f in os.listdir(cats):
        shutil.copy(os.path.join(cats, f), folder / f.upper())               # any case of the extension
    shutil.copy(named[0], folder / "sub" / "inner.png")
    os.symlink(named[0], folder / "link.png")
    (folder / "readme.txt").write_text("not an image")
    assert run_cli("predict", "--run", run, folder) == 0
    out, err = capsys.readouterr()
    got = out.strip().splitlines()
    assert [g.split("\t")[0] for g in got] == sorted(str(folder / f.upper()) for f in os.listdir(cats))
    counts = collections.Counter(g.split("\t")[1] for g in got)                 # and how many of each class
    assert f"predict: {len(got)} images: " + ", ".join(f"{c} {n}" for c, n in counts.most_common()) in err
    assert [g.split("\t", 1)[1] for g in got] == [w.split("\t", 1)[1] for w in want]


def test_predict_with_pooled_layers_views_and_a_float16_cache(tmp_path, capsys):
    """Conv layers pooled (quadrants and average) from a float16 cache with flipped views: the exported
    end-to-end model (Keras' own pooling layers) gives what the head gives on the cached original view."""
    from conftest import write_image_folders
    data = write_image_folders(str(tmp_path / "imgs"), per_class=8)
    args = ["--data-dir", data, "--cache-dir", tmp_path / "c", "--weights", "random", "--image-size", "64",
            "--precision", "float32", "--store-dtype", "float16", "--layer", "block4_pool:avg2x2,block5_pool:avg",
            "--views", "flip", "--quiet"]
    assert run_cli("features", *args) == 0
    cache = capsys.readouterr().out.strip().splitlines()[-1]
    X, y, meta = load_cache(cache)["test"]
    assert X.dtype == np.float16 and X.shape == (24, 2, 4 * 512 + 512)
    assert run_cli("train-head", "--cache", cache, "--runs-dir", tmp_path / "runs", "--name", "r", "--epochs", "3",
                   "--val-fraction", "0.2") == 0
    capsys.readouterr()
    paths = [os.path.join(data, i) for i in meta["ids"]]
    assert run_cli("predict", "--run", tmp_path / "runs" / "r", "--no-tta", *paths) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = head_model(read_head(str(tmp_path / "runs" / "r" / "head.keras")))
    want = np.asarray(head.predict(X[:, 0].astype(np.float32), verbose=0))
    got = [float(line.split("\t")[2]) for line in lines]
    agree = [line.split("\t")[1] == meta["class_names"][int(w.argmax())] for line, w in zip(lines, want)]
    assert np.mean(agree) >= 0.9 and np.allclose(got, want.max(1), atol=0.02)   # float16 rounding of the cache


def test_predict_averages_the_runs_views(tmp_path, capsys):
    """A run on a cache with views predicts the mean over the same views of each image, as its TTA figures
    (here the mirror: exactly the cached views' mean), `--no-tta` the original view; shifted views are
    seeded by the image, so an image's prediction does not depend on the others in the call."""
    from conftest import write_image_folders
    data = write_image_folders(str(tmp_path / "imgs"), per_class=8)
    common = ["--data-dir", data, "--weights", "random", "--image-size", "32", "--precision", "float32",
              "--layer", "block4_pool:avg2x2,block5_pool", "--quiet"]
    for views in ("flip", "flip,shift2"):
        assert run_cli("features", *common, "--cache-dir", tmp_path / views, "--views", views) == 0
        cache = capsys.readouterr().out.strip().splitlines()[-1]
        assert run_cli("train-head", "--cache", cache, "--runs-dir", tmp_path / "runs", "--name", views, "--epochs",
                       "3", "--val-fraction", "0.2") == 0
        X, y, meta = load_cache(cache)["test"]
        paths = [os.path.join(data, i) for i in meta["ids"]]
        capsys.readouterr()

        def probabilities(*args):
            assert run_cli("predict", "--run", tmp_path / "runs" / views, *args) == 0
            out, err = capsys.readouterr()
            return {line.split("\t")[0]: float(line.split("\t")[2]) for line in out.strip().splitlines()}, err
        head = head_model(read_head(str(tmp_path / "runs" / views / "head.keras")))
        per_view = np.stack([np.asarray(head.predict(X[:, v], verbose=0)) for v in range(X.shape[1])])
        tta, err = probabilities(*paths)
        one, _ = probabilities("--no-tta", *paths)
        assert f"the mean over the run's {X.shape[1]} views" in err
        np.testing.assert_allclose([one[p] for p in paths], per_view[0].max(1), atol=2e-4)
        if views == "flip":
            mean = per_view.mean(0)
            np.testing.assert_allclose([tta[p] for p in paths], mean.max(1), atol=2e-4)
        else:
            assert tta == probabilities(*paths[::-1], "--batch-size", "5")[0]          # order and batches aside
            assert max(abs(tta[p] - one[p]) for p in paths) > 1e-3                     # the views counted


def test_predict_with_several_image_sizes(tmp_path, capsys):
    """A cache of two sizes side by side: predict upscales each image to both, runs a VGG19 pass per size
    and gives what the head gives on the cached features; the export takes one input per size and loads."""
    from conftest import write_image_folders
    data = write_image_folders(str(tmp_path / "imgs"), per_class=8)
    args = ["--data-dir", data, "--cache-dir", tmp_path / "c", "--weights", "random", "--image-size", "64+32",
            "--precision", "float32", "--layer", "block4_pool:avg2x2,block5_pool", "--quiet"]
    assert run_cli("features", *args) == 0
    cache = capsys.readouterr().out.strip().splitlines()[-1]
    X, y, meta = load_cache(cache)["test"]
    assert X.shape == (24, 2048 + 512 + 2048 + 2048)      # 32 px: quadrants + 1x1x512; 64 px: quadrants + 2x2x512
    run = tmp_path / "runs" / "r"
    assert run_cli("train-head", "--cache", cache, "--runs-dir", tmp_path / "runs", "--name", "r", "--epochs", "3",
                   "--val-fraction", "0.2", "--normalize", "sqrt-l2") == 0
    assert read_head(str(run / "head.keras"))["blocks"] == [2048, 512, 2048, 2048]
    capsys.readouterr()
    paths = [os.path.join(data, i) for i in meta["ids"]]
    assert run_cli("predict", "--run", run, *paths, "--export", tmp_path / "e.keras") == 0
    out, err = capsys.readouterr()
    want = np.asarray(head_model(read_head(str(run / "head.keras"))).predict(X, verbose=0))
    got = [float(line.split("\t")[2]) for line in out.strip().splitlines()]
    np.testing.assert_allclose(got, want.max(1), atol=2e-4)
    assert "inputs 32x32 and 64x64" in err
    import keras
    from pipeline.features.images import decode_image
    from pipeline.features.preprocess import upscale
    exported = keras.saving.load_model(str(tmp_path / "e.keras"))
    assert [t.name for t in exported.inputs] == ["image_32", "image_64"]
    images = [decode_image(p) for p in paths]
    x = [upscale(images, s, "cubic").astype(np.float32) for s in (32, 64)]
    np.testing.assert_allclose(np.asarray(exported.predict(x, verbose=0)), want, atol=1e-5)


def _edit_settings(m, **kw):
    m["provenance"]["settings"].update(kw)


@pytest.mark.parametrize("change,needle", [
    (lambda m: _edit_settings(m, image_size=1024), "image_size: expected 32..512"),
    (lambda m: _edit_settings(m, image_size="32"), "setting image_size is '32', expected an int"),
    (lambda m: _edit_settings(m, image_size="64+32"), "expected sizes joined by + smallest first (32+64)"),
    (lambda m: _edit_settings(m, image_size="32+x"), "image_size: expected a size"),
    (lambda m: _edit_settings(m, image_size="32+64"), "head.keras takes"),        # width: the head is one size's
    (lambda m: m["provenance"]["settings"].pop("interpolation"), "setting interpolation is 'None', expected a str"),
    (lambda m: _edit_settings(m, layer="block5_pool:avg"), "head.keras takes"),          # width 512 vs the head's
    (lambda m: _edit_settings(m, precision="float64"), "expected float32, tensorfloat32, bfloat16 or float16"),
    (lambda m: _edit_settings(m, views="shift999"), "views: expected none, or a comma list"),
    (lambda m: _edit_settings(m, views="flip", shift_range=5), "shift_range: expected a fraction"),
    (lambda m: _edit_settings(m, views_seed="0"), "setting views_seed is '0', expected an int"),
    (lambda m: m.update(class_names=["cat\tx", "dog", "frog"]), "printable"),
    (lambda m: m.update(head=["softmax"]), "expected softmax, logreg or ensemble"),
])
def test_a_run_folder_is_validated_like_a_cache(cached, tmp_path, capsys, monkeypatch, change, needle):
    root, data, cache = cached
    run = shutil.copytree(train(root, cache, "logreg", "run-settings") if not os.path.exists(
        root / "runs" / "run-settings") else root / "runs" / "run-settings", tmp_path / "r")
    m = json.load(open(run / "metrics.json"))
    change(m)
    (run / "metrics.json").write_text(json.dumps(m))
    monkeypatch.setattr("pipeline.predict.build_backbone", lambda *a, **k: pytest.fail("backbone built"))
    capsys.readouterr()
    code, _, err = run_captured(capsys, "predict", "--run", run, os.path.join(data, "test", "cat", "000.png"))
    assert is_one_line_error(code, err, needle) and "Traceback" not in err


def test_lines_come_batch_by_batch_with_progress(cached, tmp_path, capsys):
    """Each batch's lines are printed as it is done, so a bad image in a later batch leaves the earlier
    batches' lines (and the export, written before them) and is one line; a progress bar unless --quiet."""
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-stream")
    capsys.readouterr()
    cats = sorted(os.path.join(data, "test", "cat", f) for f in os.listdir(os.path.join(data, "test", "cat")))[:3]
    code, want, err = run_captured(capsys, "predict", "--run", run, *cats, "--batch-size", "2")
    assert code == 0 and len(want) == 3 and "predict: 100%" in err and "img/s" in err
    code, out, err = run_captured(capsys, "predict", "--run", run, *cats, "--quiet")
    assert code == 0 and out == want and "img/s" not in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    code, out, err = run_captured(capsys, "predict", "--run", run, *cats, bad, "--batch-size", "2", "--quiet",
                                  "--export", tmp_path / "m.keras")
    assert out == want[:2]                       # batch 1; batch 2 (cats[2] and bad.png) refused as a whole
    exported, error = err.strip().splitlines()
    assert exported.startswith(f"exported {tmp_path / 'm.keras'}") and os.path.isfile(tmp_path / "m.keras")
    assert is_one_line_error(code, error, f"cannot read image {bad}")
    assert error.endswith("(the 2 before its batch are classified above)")


def test_images_in_folders_named_after_classes_are_scored(cached, tmp_path, capsys):
    """ROOT/test/CLASS/* given as class folders: the accuracy over them (the folder's name as the label) with
    its 95% interval; images in a folder named otherwise count in no accuracy."""
    from pipeline.study_report import wilson
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-scored")
    capsys.readouterr()
    classes = sorted(os.listdir(os.path.join(data, "test")))
    code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet",
                                  *(os.path.join(data, "test", c) for c in classes))
    right = [line.split("\t")[1] == os.path.basename(os.path.dirname(line.split("\t")[0])) for line in out]
    lo, hi = wilson(np.mean(right), len(right))
    assert code == 0 and len(out) == sum(len(os.listdir(os.path.join(data, "test", c))) for c in classes)
    assert err.strip().splitlines()[-1] == (
        f"predict: accuracy {np.mean(right):.2%} (95% {lo:.2%}..{hi:.2%}) on the {len(right):,} images in a folder "
        f"named after a class of the run, that class taken as their label ({sum(right):,} right)")
    os.makedirs(tmp_path / "mixed")
    shutil.copy(os.path.join(data, "test", classes[0], os.listdir(os.path.join(data, "test", classes[0]))[0]),
                tmp_path / "mixed" / "a.png")
    code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet", tmp_path / "mixed")
    assert code == 0 and len(out) == 1 and "accuracy" not in err


def test_recursive_enters_sub_folders_but_no_links(cached, tmp_path, capsys):
    """--recursive: ROOT/test is its class folders in name order (the same lines as naming them), deeper
    folders too; a link to a folder is not entered. Without it, a folder of folders says to use it."""
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-recursive")
    capsys.readouterr()
    test = os.path.join(data, "test")
    code, want, _ = run_captured(capsys, "predict", "--run", run, "--quiet",
                                 *(os.path.join(test, c) for c in sorted(os.listdir(test))))
    tree = tmp_path / "tree"
    shutil.copytree(test, tree / "test")
    os.symlink(test, tree / "test" / "zz-link")                                  # not entered
    deep = tree / "test" / "zzz" / "a" / "b"
    os.makedirs(deep)
    shutil.copy(want[0].split("\t")[0], deep / "deep.png")
    code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet", "--recursive", tree)
    assert code == 0 and [line.split("\t", 1)[1] for line in out] == [w.split("\t", 1)[1] for w in want] + [
        want[0].split("\t", 1)[1]]
    assert out[-1].split("\t")[0] == str(deep / "deep.png") and "accuracy" in err
    code, _, err = run_captured(capsys, "predict", "--run", run, tree / "test")
    assert is_one_line_error(code, err, "its sub-folders are not entered without --recursive")


def test_file_names_cannot_forge_an_output_line(cached, tmp_path, capsys):
    """A name in a folder with a newline, a TAB, a backslash or a byte that is not UTF-8: one line per image,
    three fields, the name escaped (\\n, \\t, \\\\, \\xff: read back as bytes, the same name); a bad image so
    named, and a missing image, an empty folder or a missing run so named: one error line."""
    from pipeline.text_table import escaped
    root, data, cache = cached
    run = train(root, cache, "logreg", "run-names")
    capsys.readouterr()
    good = os.path.join(data, "test", "cat", sorted(os.listdir(os.path.join(data, "test", "cat")))[0])
    names = ["two\nlines\tdog\t1.0000.png", "back\\slash.png", os.fsdecode(b"bad\xff.png")]
    for name in names:
        shutil.copy(good, tmp_path / name)
    code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet", tmp_path)
    assert code == 0 and len(out) == 3 and all(len(line.split("\t")) == 3 for line in out)
    assert sorted(line.split("\t")[0] for line in out) == sorted(escaped(str(tmp_path / n)) for n in names)
    import codecs
    assert {os.fsdecode(codecs.escape_decode(line.split("\t")[0].encode())[0]) for line in out} == \
        {str(tmp_path / n) for n in names}
    (tmp_path / "bad\nimage.png").write_bytes(b"\x89PNG broken")
    code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet", tmp_path / "bad\nimage.png")
    assert is_one_line_error(code, err, "cannot read image " + escaped(str(tmp_path / "bad\nimage.png")))
    for missing in (tmp_path / "no\nsuch.png", tmp_path / "empty\nfolder"):              # typed paths too
        os.makedirs(tmp_path / "empty\nfolder", exist_ok=True)
        code, out, err = run_captured(capsys, "predict", "--run", run, "--quiet", missing)
        assert is_one_line_error(code, err, escaped(str(missing))) and out == []
    code, out, err = run_captured(capsys, "predict", "--run", str(tmp_path / "no\nrun"), "--quiet", tmp_path)
    assert is_one_line_error(code, err, escaped(str(tmp_path / "no\nrun")))


def test_float32_where_it_computes_as_tensorfloat32_is_keyed_apart_and_predicts(cached, capsys, monkeypatch):
    """On an Ampere-or-later GPU (simulated: compute capability 9.0) float32 computes as TensorFloat-32: the
    cache says tensorfloat32 (float32 asked), gets its own key, and a head trained on it predicts."""
    from pipeline.features import precision
    from pipeline.features.cache import read_provenance
    root, data, cache = cached
    monkeypatch.setattr(precision, "cuda_capability", lambda: 9.0)
    code, out, err = run_captured(capsys, "features", "--data-dir", data, "--cache-dir", root / "c", *SMALL)
    assert code == 0 and out[-1] != cache and "precision: float32 -> tensorfloat32" in err
    made = read_provenance(out[-1])
    assert made["settings"]["precision"] == "tensorfloat32" and made["settings"]["precision_requested"] == "float32"
    assert made["key"] != read_provenance(cache)["key"]
    run = train(root, out[-1], "logreg", "run-tf32")
    image = os.path.join(data, load_cache(out[-1])["test"][2]["ids"][0])
    assert run_cli("predict", "--run", run, image) == 0


def test_a_first_batch_the_backend_cannot_run_in_the_runs_precision_is_one_line(tmp_path, capsys, monkeypatch):
    """A bfloat16 run predicted where TensorFlow's oneDNN is held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2: no bfloat16
    convolutions) ended in a 113-line traceback; the backend's failure is simulated here, the run is a real one."""
    from conftest import write_image_folders
    import pipeline.predict as predict
    data = write_image_folders(str(tmp_path / "imgs"), per_class=8)
    small = ["bfloat16" if a == "float32" else a for a in SMALL]
    assert run_cli("features", "--data-dir", data, "--cache-dir", tmp_path / "c", *small) == 0
    cache = [os.path.join(tmp_path / "c", f) for f in os.listdir(tmp_path / "c") if f.endswith(".h5")][0]
    run = train(tmp_path, cache, "logreg", "bf16")

    class Lacking:
        def predict_on_batch(self, x):
            raise RuntimeError("Graph execution error:\nOperation received an exception:Status: 3, message: could not "
                               "create a primitive descriptor for the convolution\n\t [[{{node conv}}]]")
    monkeypatch.setattr(predict, "end_to_end", lambda info: Lacking())
    cats = sorted(os.path.join(data, "test", "cat", f) for f in os.listdir(os.path.join(data, "test", "cat")))[:2]
    capsys.readouterr()
    code, out, err = run_captured(capsys, "predict", "--run", run, *cats, "--quiet")
    assert not out and is_one_line_error(code, err, "predict: the backbone failed on its first batch computing in "
                                         "bfloat16 (RuntimeError: Operation received an exception:Status: 3, message: "
                                         "could not create a primitive descriptor for the convolution)")
    assert "run it where the backend computes in bfloat16" in err
