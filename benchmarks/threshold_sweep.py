"""Choose a nucleus model's inference thresholds on training images, not on val: the DSB score
per image kind for every pair of DETECTION_MIN_CONFIDENCE and DETECTION_MASK_THRESHOLD on a
grid, from one run of the inference graph per image.

    python benchmarks/threshold_sweep.py --logs runs/e40 --dataset ../shared/data/dsb2018 \\
        --subset train --every 5 [--set COMPUTE_DTYPE=float32] [--out sweep.json] \\
        [--confidences 0.5,0.6,0.7,0.8,0.9] [--mask-thresholds 0.3,0.4,0.5,0.6]

The JSON (``--out``) holds the means and, under ``images``, each image's id, kind and scores
(keys ``"<confidence>_<mask threshold>"``), so two models or settings can be paired per image.

Each image's detections are made once with DETECTION_MIN_CONFIDENCE at the lowest grid value;
each mask threshold then pastes the same 28 x 28 mask probabilities into the image, and each
confidence keeps the detections scored at or above it, overlaps removed by score as
``evaluate`` does. With two classes (background and nucleus) a confidence below 0.5 acts as
0.5: the detection layer keeps a ROI only when nucleus is its most probable class. With
OBJECT_SIZE_TARGET set (``--set OBJECT_SIZE_TARGET=32``), the graph runs a second time at the
scale ``Detector.object_scale`` chooses from the first pass's detections, as ``detect`` does.
"""

import argparse
import json

import numpy as np

from mrcnn.metrics import dsb_image_score, remove_overlaps
from samples.nucleus.cli_eval import add_checkpoint_arguments, load_inference_model, load_subset


def parse_floats(text):
    return [float(v) for v in text.split(",")]


def grid_scores(true_masks, detections_by_threshold, confidences):
    """One image's DSB score at every (confidence, mask threshold) pair.

    Args:
        true_masks: [H, W, N] bool.
        detections_by_threshold: {mask threshold: (scores [M], masks [H, W, M] bool)}, the
            lowest confidence's detections pasted at that threshold. M can differ between
            thresholds: DETECTION_MAX_COVERED_FRACTION drops detections by their pasted masks.
        confidences: the DETECTION_MIN_CONFIDENCE values.

    Returns:
        {(confidence, mask threshold): DSB score}.
    """
    out = {}
    for threshold, (scores, masks) in detections_by_threshold.items():
        scores = np.asarray(scores)
        for confidence in confidences:
            keep = scores >= confidence
            kept, _ = remove_overlaps(masks[..., keep], scores[keep])
            out[(confidence, threshold)] = float(dsb_image_score(true_masks, kept))
    return out


def summarise(rows):
    """Mean score per grid pair over all images and per kind.

    Args:
        rows: list of (kind, {(confidence, mask threshold): score}) per image.

    Returns:
        {"all": {pair: mean}, kind: {pair: mean}, ...}; "best" the pair with the highest mean
        over all images (the lower confidence and threshold on a tie).
    """
    groups = {"all": [r for _, r in rows]}
    for kind, r in rows:
        groups.setdefault(kind, []).append(r)
    table = {name: {pair: float(np.mean([r[pair] for r in rs])) for pair in rs[0]}
             for name, rs in groups.items()}
    table["best"] = max(sorted(table["all"]), key=lambda pair: table["all"][pair])
    return table


def print_table(table, confidences, thresholds):
    kinds = [k for k in table if k not in ("all", "best")]
    print("confidence  mask thr.   DSB all  " + "  ".join(f"{k[:12]:>12s}" for k in kinds))
    for confidence in confidences:
        for threshold in thresholds:
            pair = (confidence, threshold)
            mark = "  <- best" if pair == table["best"] else ""
            print(f"{confidence:10.2f}  {threshold:9.2f}  {table['all'][pair]:8.4f}  " +
                  "  ".join(f"{table[k][pair]:12.4f}" for k in kinds) + mark)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser, subset="train")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument("--confidences", type=parse_floats, default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--mask-thresholds", type=parse_floats, default=[0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--out", default=None, help="also write the table as JSON")
    args = parser.parse_args()

    from mrcnn.data.loader import load_full_masks
    from mrcnn.ops.masks import grey_levels
    from samples.nucleus.nucleus import image_kind

    confidences, thresholds = sorted(args.confidences), sorted(args.mask_thresholds)
    args.min_confidence = confidences[0]
    model = load_inference_model(args)
    dataset, ids = load_subset(args.dataset, args.subset)
    rows, names = [], []
    for image_id in ids[::args.every]:
        image = dataset.load_image(image_id)
        true_masks, _ = load_full_masks(dataset, image_id, image)
        # measured once, not once per mask threshold; only when the band uses them
        grey = grey_levels(image) if model.config.DETECTION_MASK_INTENSITY_BAND else None
        graph = model.run_graph(image)
        if model.config.OBJECT_SIZE_TARGET:   # the object-size pass of Detector.detect
            _, _, scores, masks = model.unmold_detections(
                graph["detections"], graph["mrcnn_mask"], image.shape, graph["image"].shape,
                graph["window"], intensity=grey)
            scale = model.detector.object_scale(image.shape, {"scores": scores, "masks": masks})
            if scale is not None:
                graph = model.run_graph(image, scale)
        detections_by_threshold = {}
        for threshold in thresholds:
            _, _, scores, masks = model.unmold_detections(
                graph["detections"], graph["mrcnn_mask"], image.shape, graph["image"].shape,
                graph["window"], mask_threshold=threshold, intensity=grey)
            detections_by_threshold[threshold] = (scores, masks)
        rows.append((image_kind(image), grid_scores(np.asarray(true_masks, bool),
                                                    detections_by_threshold, confidences)))
        names.append(dataset.image_info[image_id]["id"])
    table = summarise(rows)
    print(f"{len(rows)} {args.subset} images")
    print_table(table, confidences, thresholds)
    if args.out:
        def keyed(scores):
            return {f"{c}_{t}": v for (c, t), v in scores.items()}
        report = {name: keyed(entry) if name != "best" else list(entry)
                  for name, entry in table.items()}
        report["images"] = [{"id": name, "kind": kind, "scores": keyed(scores)}
                            for name, (kind, scores) in zip(names, rows)]
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
