"""Similarity from a click on real micrographs: the map's ROC AUC for the clicked class.

Usage::

    .venv/bin/python benchmarks/bench_similarity.py [--data ../shared/evaldata] [--sets super isb0 ...]
        [--weights pretrained|/path/to/checkpoint] [--facet key] [--clicks 3] [--limit 4]
        [--out benchmarks/results/similarity.json]

For every image of the chosen evaluation sets (``../shared/evaldata``, the sets of
``cas_quality.py``) and every class in its ground truth, ``--clicks`` pixels well inside that
class are "clicked" (seeded), and :func:`napari_dinoseg.similarity_map` scores every pixel; the
ROC AUC of the map for the class against the rest is reported:

- **same image**: the clicks and the map on one image;
- **next image**: clicks on the set's first image, the map on each of the others (``reference=``):
  the "find more of this in the folder" use.

Rows: classical features (always), and DINOv2-S features (``--facet``, default the keys of the
last block) only with ``--weights`` (``pretrained``: the released file or the Hugging Face cache;
or a checkpoint path). Without weights the DINOv2 rows print "not run: no weights": random
weights are never used for quality figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cas_quality import SETS, read_set  # noqa: E402


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` pixels (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.ravel(score))
    pos = np.ravel(positive).astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def clicks(truth: np.ndarray, cls: int, n: int, rng) -> Optional[np.ndarray]:
    """``n`` pixels of class ``cls`` at least 3 px inside it (``None`` when it has too few)."""
    from scipy import ndimage

    inside = ndimage.binary_erosion(truth == cls, iterations=3)
    rows, cols = np.nonzero(inside)
    if len(rows) < n:
        return None
    pick = rng.choice(len(rows), n, replace=False)
    return np.column_stack([rows[pick], cols[pick]])


def weights_available(weights: Optional[str]) -> Optional[str]:
    """``None`` when DINOv2 features can run with these weights, else why not."""
    if not weights:
        return "not run: no weights"
    from napari_dinoseg.features.registry import find_weights

    try:
        find_weights("dinov2_vits14", None if weights == "pretrained" else weights)
    except ValueError as err:
        return f"not run: no weights ({err})"
    return None


def run(data: Path, sets: list[str], configs: dict, n_clicks: int, limit: int, seed: int) -> list[dict]:
    from napari_dinoseg import featurise, similarity_map

    rows = []
    for name in sets:
        items = read_set(data, name, limit)
        for label, config in configs.items():
            feats = [featurise(image, config) for _, image, _ in items]
            classes = sorted(set(np.unique(items[0][2]).tolist()))
            for cls in classes:
                rng = np.random.default_rng(seed)
                same, nxt = [], []
                first_clicks = clicks(items[0][2], cls, n_clicks, rng)
                for k, ((_, _, truth), f) in enumerate(zip(items, feats)):
                    pts = first_clicks if k == 0 else clicks(truth, cls, n_clicks, rng)
                    if pts is None or not (truth == cls).any() or (truth == cls).all():
                        continue
                    same.append(roc_auc(similarity_map(f, pts), truth == cls))
                    if k > 0 and first_clicks is not None:
                        nxt.append(roc_auc(similarity_map(f, first_clicks, reference=feats[0]), truth == cls))
                rows.append({"set": name, "class": int(cls), "features": label, "images": len(items),
                             "same_image_auc": float(np.mean(same)) if same else None,
                             "next_image_auc": float(np.mean(nxt)) if nxt else None,
                             "same_image_all": same, "next_image_all": nxt})
                print(f"{name} class {cls} {label}: same {rows[-1]['same_image_auc']}, next {rows[-1]['next_image_auc']}",
                      flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "evaldata")
    parser.add_argument("--sets", nargs="+", default=["super", "isb0", "particles", "nuclei"], choices=list(SETS))
    parser.add_argument("--weights", default=None, help="'pretrained' or a checkpoint path; none: DINOv2 rows not run")
    parser.add_argument("--facet", default="key", choices=["token", "key", "query", "value"])
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--limit", type=int, default=4, help="images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "similarity.json")
    args = parser.parse_args()

    from napari_dinoseg import FeatureConfig

    configs = {"classical": FeatureConfig()}
    status = weights_available(args.weights)
    if status is None:
        configs[f"DINOv2-S {args.facet}s"] = FeatureConfig(
            kind="vit", facet=args.facet, weights=None if args.weights == "pretrained" else args.weights)
    else:
        print(f"DINOv2-S {args.facet}s: {status}")
    rows = run(args.data, args.sets, configs, args.clicks, args.limit, args.seed)
    lines = [f"Similarity map ROC AUC for a clicked class ({args.clicks} clicks, seed {args.seed}, first "
             f"{args.limit} images per set). DINOv2 rows: {status or 'run with ' + str(args.weights)}.", "",
             "| set | class | features | same image | clicks on image 1, map on the others |", "|---|---|---|---|---|"]
    for r in rows:
        cell = [f"{r[k]:.3f}" if r[k] is not None else "–" for k in ("same_image_auc", "next_image_auc")]
        lines.append(f"| {r['set']} | {r['class']} | {r['features']} | {cell[0]} | {cell[1]} |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dinov2": status or "run", "rows": rows}, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
