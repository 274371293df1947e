"""Extremely randomised trees for the pixel classifier, kept as plain arrays (no pickle).

scikit-learn grows the trees (:class:`~sklearn.ensemble.ExtraTreesClassifier`); only what
prediction reads is kept -- per node its children, split feature and threshold, and the
class fractions of the leaves -- so a classifier bundle stores numbers, never code. The
arrays are turned back into scikit-learn trees (their public pickling state) to predict,
which keeps scikit-learn's compiled, GIL-free traversal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


#: Array names of a :class:`Forest`, as stored in bundles.
ARRAYS = ("left", "right", "feature", "threshold", "values", "offsets", "depths")
#: A leaf's children (scikit-learn's ``TREE_LEAF``).
LEAF = -1


@dataclass(frozen=True, eq=False)
class Forest:
    """Decision trees as flat arrays; the nodes of tree ``t`` are ``offsets[t]:offsets[t + 1]``.

    Attributes
    ----------
    left, right : (N,) int64
        Children of each node, as indices within its tree; ``-1`` for leaves.
    feature : (N,) int64
        Feature each internal node splits on (``x[feature] <= threshold`` goes left).
    threshold : (N,) float64
    values : (N, K) float32
        Class fractions at each node (read at the leaves).
    offsets : (T + 1,) int64
    depths : (T,) int64
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    depths: np.ndarray
    _trees: list = field(default_factory=list, repr=False, compare=False)

    @property
    def n_trees(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_classes(self) -> int:
        return self.values.shape[1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def predict_proba(self, x: np.ndarray, n_features: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``(n, F)`` float32 features -> ``(n, K)`` float32 mean of the trees' class fractions.

        ``x`` may have any strides (a transposed channels-first chunk is read as it is); with
        ``out`` (``(n, K)`` float32) the result is written there. Single-threaded: callers
        predict chunks of pixels in parallel (the traversal releases the GIL).
        """
        trees = self._sklearn_trees(n_features)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        total = np.zeros((len(x), self.n_classes), np.float32) if out is None else out
        if out is not None:
            total.fill(0)
        leaf_values = np.empty_like(total)
        for t, tree in enumerate(trees):
            values = self.values[self.offsets[t]:self.offsets[t + 1]]
            np.take(values, tree.apply(x), axis=0, out=leaf_values)
            total += leaf_values
        total *= np.float32(1 / len(trees))
        return total

    def _sklearn_trees(self, n_features: int) -> list:
        if not self._trees:
            from sklearn.tree._tree import NODE_DTYPE, Tree

            k, built = self.n_classes, []
            for t in range(self.n_trees):
                a, b = int(self.offsets[t]), int(self.offsets[t + 1])
                nodes = np.zeros(b - a, dtype=NODE_DTYPE)
                nodes["left_child"], nodes["right_child"] = self.left[a:b], self.right[a:b]
                nodes["feature"], nodes["threshold"] = self.feature[a:b], self.threshold[a:b]
                tree = Tree(n_features, np.array([k], dtype=np.intp), 1)
                tree.__setstate__({"max_depth": int(self.depths[t]), "node_count": b - a, "nodes": nodes,
                                   "values": self.values[a:b, None, :].astype(np.float64)})
                built.append(tree)
            if not self._trees:  # two threads may both build: keep one complete set
                self._trees.extend(built)
        return self._trees


def fit_forest(x: np.ndarray, y: np.ndarray, n_trees: int, class_weight: Optional[str], seed: int) -> Forest:
    """Grow extremely randomised trees on ``(n, F)`` features and ``(n,)`` labels."""
    from sklearn.ensemble import ExtraTreesClassifier

    model = ExtraTreesClassifier(n_estimators=n_trees, min_samples_leaf=2, class_weight=class_weight,
                                 random_state=seed).fit(x, y)  # one thread: joblib's polling costs more here
    parts = [e.tree_.__getstate__() for e in model.estimators_]
    nodes = np.concatenate([p["nodes"] for p in parts])
    values = np.concatenate([p["values"][:, 0, :] for p in parts])
    values = values / np.maximum(values.sum(axis=1, keepdims=True), 1e-12)  # fractions in every version
    return Forest(
        left=nodes["left_child"].astype(np.int64), right=nodes["right_child"].astype(np.int64),
        feature=nodes["feature"].astype(np.int64), threshold=nodes["threshold"].astype(np.float64),
        values=values.astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum([p["node_count"] for p in parts])]).astype(np.int64),
        depths=np.array([p["max_depth"] for p in parts], dtype=np.int64),
    )


def forest_from_arrays(arrays: dict[str, np.ndarray], n_features: int, n_classes: int) -> Forest:
    """Rebuild a :class:`Forest` from stored arrays, checking every index (a bad index would
    make the compiled traversal read out of bounds).

    Raises
    ------
    ValueError
        For arrays that do not describe valid trees over ``n_features`` features and
        ``n_classes`` classes: integer indices in range, children after their parent,
        finite thresholds, class fractions in [0, 1].
    """
    try:
        a = {name: np.asarray(arrays[name]) for name in ARRAYS}
    except KeyError as err:
        raise ValueError(f"forest array {err} is missing") from None
    if not (all(a[name].dtype.kind in "iu" for name in ("left", "right", "feature", "offsets", "depths"))
            and all(a[name].dtype.kind in "iuf" for name in ("threshold", "values"))):
        raise ValueError("forest arrays do not describe valid trees: their dtypes are "
                         f"{ {name: str(arr.dtype) for name, arr in a.items()} }")
    left, right, feature, values, off = a["left"], a["right"], a["feature"], a["values"], a["offsets"]
    n = len(left) if left.ndim == 1 else -1
    ok = (
        all(a[name].shape == (n,) for name in ("left", "right", "feature", "threshold"))
        and values.shape == (n, n_classes) and off.ndim == 1 and len(off) >= 2 and off[0] == 0 and off[-1] == n
        and np.all(np.diff(off) > 0) and a["depths"].shape == (len(off) - 1,)
        and np.all((a["depths"] >= 0) & (a["depths"] < np.diff(off)))  # a tree of s nodes is < s deep
        and np.isfinite(a["threshold"]).all() and np.all((values >= 0) & (values <= 1))  # class fractions
    )
    if ok:
        size = np.repeat(np.diff(off), np.diff(off))  # node count of each node's tree
        local = np.arange(n) - np.repeat(off[:-1], np.diff(off))  # each node's index in its tree
        inner = left != LEAF
        ok = (
            np.array_equal(inner, right != LEAF)  # children after their parent: no cycles
            and np.all((left[inner] > local[inner]) & (left[inner] < size[inner]))
            and np.all((right[inner] > local[inner]) & (right[inner] < size[inner]))
            and np.all((feature[inner] >= 0) & (feature[inner] < n_features))
        )
    if not ok:
        raise ValueError("forest arrays do not describe valid trees for this classifier")
    dtypes = {"threshold": np.float64, "values": np.float32}
    return Forest(**{name: arr.astype(dtypes.get(name, np.int64)) for name, arr in a.items()})
