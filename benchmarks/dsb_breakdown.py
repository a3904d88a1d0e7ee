"""Where a nucleus model's DSB score is lost: the score, precision and recall at each IoU
threshold per image kind, and per nucleus size how many true nuclei are found, how many only
by a detection below the confidence threshold, how well the found ones are outlined, and at
which stage the missed ones are lost (no RPN proposal near them, or no confident detection
box: box IoU > 0.5 and > 0.7 with the proposals and with the scored detections' boxes; and
how many have a proposal at box IoU > 0.5 that the box head classified, every one of them,
as background, which no DETECTION_MIN_CONFIDENCE can bring back).

    python benchmarks/dsb_breakdown.py --logs runs/e40 --dataset ../shared/data/dsb2018 \
        [--subset val] [--set COMPUTE_DTYPE=float32] [--floor 0.05] [--out breakdown.json]

Detections are made once with DETECTION_MIN_CONFIDENCE lowered to ``--floor``; the scored
set is the detections at or above the run's own minimum confidence (as ``evaluate`` scores
them, overlaps removed by score). The detection layer keeps a ROI only when its most probable
class is not background, so with two classes a floor below 0.5 acts as 0.5. Sizes are true
mask areas in pixels of the original image.
"""

import argparse
import json

import numpy as np

from mrcnn.metrics import DSB_THRESHOLDS, dsb_true_positives, mask_iou_matrix, remove_overlaps
from mrcnn.metrics.dsb import SIZE_EDGES, precisions_from_counts, size_buckets
from mrcnn.ops.boxes import compute_overlaps, denorm_boxes, extract_bboxes, norm_boxes
from samples.nucleus.cli_eval import add_checkpoint_arguments, load_inference_model, load_subset


def image_record(true_masks, masks, scores, min_confidence, proposals=None, boxes=None,
                 proposal_kept=None):
    """Per-image counts for the breakdown.

    Args:
        true_masks: [H, W, N] bool; masks: [H, W, M] bool detections at any score >= the
        floor; scores: [M]; min_confidence: the scored set's threshold.
        proposals: optional [P, 4] RPN proposals, pixels of the original image; boxes:
        optional [M, 4] the detections' boxes, pixels (given together).
        proposal_kept: optional [P] bool with proposals, whether the box head's most probable
        class for each proposal is not background.

    Returns:
        dict: ``tp`` [T] true positives of the scored set per DSB threshold, ``true`` N,
        ``predicted`` (scored set size), ``areas`` [N] px, ``best_iou`` [N] best mask IoU
        of each true nucleus with the scored set, ``best_iou_any`` [N] with any detection;
        with proposals, ``proposal_iou`` and ``box_iou`` [N]: each true nucleus's best box IoU
        with a proposal and with a scored detection's box; with proposal_kept,
        ``classified_background`` [N] bool: the nucleus has a proposal at box IoU > 0.5 and
        the box head classified every such proposal as background.
    """
    confident = scores >= min_confidence
    stages = {}
    if proposals is not None:
        true_boxes = extract_bboxes(true_masks)
        proposal_ious = box_ious(true_boxes, proposals)
        stages = {"proposal_iou": best_iou(proposal_ious),
                  "box_iou": best_iou(box_ious(true_boxes, np.asarray(boxes)[confident]))}
        if proposal_kept is not None:
            near = proposal_ious > 0.5
            stages["classified_background"] = (
                near.any(axis=1) & ~(near & np.asarray(proposal_kept, bool)).any(axis=1))
    scored, _ = remove_overlaps(masks[..., confident], scores[confident])
    n = true_masks.shape[-1]
    iou = mask_iou_matrix(true_masks, scored)
    best = iou.max(axis=1) if scored.shape[-1] else np.zeros(n)
    if masks.shape[-1]:
        best_any = np.maximum(best, mask_iou_matrix(true_masks, masks).max(axis=1))
    else:
        best_any = best
    return {"tp": dsb_true_positives(true_masks, scored, iou=iou), "true": n,
            "predicted": int(scored.shape[-1]),
            "areas": true_masks.sum(axis=(0, 1)), "best_iou": best,
            "best_iou_any": best_any, **stages}


def box_ious(true_boxes, boxes):
    """[N, M] IoU of each true box [N, 4] with each of ``boxes`` [M, 4] (pixels)."""
    if not len(boxes) or not len(true_boxes):
        return np.zeros((len(true_boxes), len(boxes)))
    return compute_overlaps(np.asarray(true_boxes, np.float32), np.asarray(boxes, np.float32))


def best_iou(ious):
    """[N] each row's best IoU of an [N, M] matrix (0 if M = 0)."""
    return ious.max(axis=1) if ious.shape[1] else np.zeros(len(ious))


def proposals_in_image(rpn_rois, molded_shape, window, image_shape):
    """RPN proposals [P, 4] normalised in the molded image -> pixels of the original image
    (the mapping ``unmold_detections`` applies to detection boxes); all-zero padding rows
    dropped."""
    rois = np.asarray(rpn_rois)
    rois = rois[np.any(rois != 0, axis=1)]
    wy1, wx1, wy2, wx2 = norm_boxes(np.array([window]), molded_shape[:2])[0]
    rois = (rois - np.array([wy1, wx1, wy1, wx1])) / \
        np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    return denorm_boxes(rois, image_shape[:2])


def threshold_curves(records):
    """Mean over images of score, precision and recall at each DSB threshold -> dict of [T]."""
    score, precision, recall = [], [], []
    for r in records:
        tp, n, m = r["tp"], r["true"], r["predicted"]
        score.append(precisions_from_counts(tp, n, m))
        precision.append(tp / m if m else np.full(len(tp), float(n == 0)))
        recall.append(tp / n if n else np.full(len(tp), float(m == 0)))
    return {"score": np.mean(score, axis=0), "precision": np.mean(precision, axis=0),
            "recall": np.mean(recall, axis=0)}


def size_table(records, edges=SIZE_EDGES):
    """Per size bucket over all true nuclei of ``records``: count, share found (best IoU >
    0.5 in the scored set), share found only below the confidence threshold, share found at
    IoU > 0.75, and the median IoU of the found ones."""
    def joined(key):
        return np.concatenate([r[key] for r in records]) if records else np.zeros(0)

    areas, best, best_any = joined("areas"), joined("best_iou"), joined("best_iou_any")
    staged = bool(records) and all("proposal_iou" in r for r in records)
    proposal, box = (joined("proposal_iou"), joined("box_iou")) if staged else (None, None)
    classified = (joined("classified_background") if staged and
                  all("classified_background" in r for r in records) else None)
    bucket, names = size_buckets(areas, edges)
    rows = []
    for k, name in enumerate(names):
        sel = bucket == k
        count = int(sel.sum())
        if not count:
            continue
        found = best[sel] > 0.5
        rows.append({"area_px": name, "true": count, "found": float(found.mean()),
                     "only_below_confidence": float(((best_any[sel] > 0.5) & ~found).mean()),
                     "found_iou_0.75": float((best[sel] > 0.75).mean()),
                     "median_iou_found": float(np.median(best[sel][found])) if found.any()
                     else None})
        if staged:
            rows[-1].update({f"{name}_box_{t}": float((values[sel] > t).mean())
                             for name, values in (("proposal", proposal), ("detection", box))
                             for t in (0.5, 0.7)})
        if classified is not None:
            rows[-1]["classified_background"] = float(classified[sel].mean())
    return rows


def breakdown(records_by_kind):
    """{kind: records} -> JSON-able report with an ``all`` entry."""
    groups = dict(records_by_kind)
    groups["all"] = [r for records in records_by_kind.values() for r in records]
    report = {"thresholds": DSB_THRESHOLDS.tolist()}
    for kind, records in groups.items():
        curves = threshold_curves(records)
        report[kind] = {"images": len(records),
                        "dsb_score": float(curves["score"].mean()),
                        **{k: np.round(v, 4).tolist() for k, v in curves.items()},
                        "by_size": size_table(records)}
    return report


def print_report(report):
    header = " ".join(f"{t:5.2f}" for t in report["thresholds"])
    for kind, entry in report.items():
        if not isinstance(entry, dict):     # thresholds, min_confidence
            continue
        print(f"== {kind}: {entry['images']} images, DSB {entry['dsb_score']:.3f}")
        print(f"   IoU >      {header}")
        for name in ("score", "precision", "recall"):
            print(f"   {name:10s} " + " ".join(f"{v:5.2f}" for v in entry[name]))
        for row in entry["by_size"]:
            iou = row["median_iou_found"]
            below = row["only_below_confidence"]
            print(f"   area {row['area_px']:>9} px: {row['true']:5d} nuclei, found "
                  f"{row['found']:.2f} (only below the confidence {below:.2f}), "
                  f"at IoU > 0.75 {row['found_iou_0.75']:.2f}, median IoU of found "
                  + (f"{iou:.3f}" if iou is not None else "-"))
            if "proposal_box_0.5" in row:
                print(f"   {'':>19}  box IoU > 0.5 / 0.7 with a proposal "
                      f"{row['proposal_box_0.5']:.2f} / {row['proposal_box_0.7']:.2f}, with a "
                      f"scored detection {row['detection_box_0.5']:.2f} / "
                      f"{row['detection_box_0.7']:.2f}")
            if "classified_background" in row:
                print(f"   {'':>19}  a proposal at box IoU > 0.5, each one classified "
                      f"background {row['classified_background']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--floor", type=float, default=0.05,
                        help="lowest detection score kept for the 'only below' column")
    parser.add_argument("--out", default=None, help="also write the report as JSON")
    args = parser.parse_args()

    from mrcnn.data.loader import load_full_masks
    from samples.nucleus.cli_common import (load_run_overrides, make_config,
                                            parse_overrides, resolve_checkpoint)
    from samples.nucleus.nucleus import image_kind

    # The scored threshold is the one evaluate would use with the same --set; the floor is
    # applied last so that a --set DETECTION_MIN_CONFIDENCE cannot replace it.
    overrides = {**load_run_overrides(resolve_checkpoint(args.weights, args.logs)),
                 **parse_overrides(args.set)}
    min_confidence = make_config(overrides, inference=True).DETECTION_MIN_CONFIDENCE
    args.set = (args.set or []) + [f"DETECTION_MIN_CONFIDENCE={min(args.floor, min_confidence)}"]
    model = load_inference_model(args)
    dataset, ids = load_subset(args.dataset, args.subset, args.limit)
    records = {}
    for image_id in ids:
        image = dataset.load_image(image_id)
        true_masks, _ = load_full_masks(dataset, image_id, image)
        graph = model.run_graph(image)
        boxes, _, scores, masks = model.unmold_detections(
            graph["detections"], graph["mrcnn_mask"], image.shape, graph["image"].shape,
            graph["window"], image=image)
        proposals = proposals_in_image(graph["rpn_rois"], graph["image"].shape, graph["window"],
                                       image.shape)
        real = np.any(np.asarray(graph["rpn_rois"]) != 0, axis=1)
        kept = np.argmax(np.asarray(graph["mrcnn_class"])[real], axis=1) > 0
        records.setdefault(image_kind(image), []).append(image_record(
            np.asarray(true_masks, bool), masks, scores, min_confidence, proposals, boxes,
            kept))
    report = breakdown(records)
    report["min_confidence"] = float(min_confidence)
    print_report(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
