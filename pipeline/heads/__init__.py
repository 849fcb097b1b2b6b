"""Stage two: heads trained on cached features (scikit-learn estimators), sweeps, run folders.

The estimators are imported when first used (`from pipeline.heads import SoftmaxHead`), so the
command line's start-up does not pay for scikit-learn until a head is trained."""

__all__ = ["LogRegHead", "SoftmaxHead", "JointSoftmax"]


def __getattr__(name):
    if name == "LogRegHead":
        from .logreg import LogRegHead
        return LogRegHead
    if name == "SoftmaxHead":
        from .softmax import SoftmaxHead
        return SoftmaxHead
    if name == "JointSoftmax":
        from .joint import JointSoftmax
        return JointSoftmax
    raise AttributeError(f"module 'pipeline.heads' has no attribute {name!r}")
