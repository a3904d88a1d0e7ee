"""How well the RPN anchors fit the nuclei of a dataset: per nucleus size, the median best
anchor IoU and the mean number of anchors at IoU >= 0.5 and >= 0.7 (the RPN's positive threshold
RPN_POSITIVE_IOU: 0.5 in the nucleus from-scratch config, 0.7 in Config), over random training
crops exactly as training cuts them.

    python benchmarks/anchor_coverage.py --dataset ../shared/data/dsb2018 [--crops 150] \\
        [--scales-per-octave 1,2] [--scale-multipliers 1,1.5] [--set KEY=VALUE ...]

The config is the from-scratch nucleus config (``SCRATCH_OVERRIDES``) with ``--set`` on top;
each variant changes RPN_ANCHOR_SCALES_PER_OCTAVE and multiplies RPN_ANCHOR_SCALES. Sizes are
the boxes' areas in pixels of the original image (the crop's boxes divided by the scale).
A box with no anchor at the positive threshold trains the RPN only through its best anchor
(made positive as the box's best), so low counts mean few, poorly placed positives.
"""

import argparse

import numpy as np

from mrcnn.metrics.dsb import SIZE_EDGES, size_buckets


def coverage(boxes_per_crop, anchors, scale=1.0, edges=SIZE_EDGES):
    """Per size bucket: count, median best IoU, mean anchors with IoU >= 0.5 and >= 0.7.

    Args:
        boxes_per_crop: list of [G, 4] pixel boxes (y1, x1, y2, x2), one per crop.
        anchors: [A, 4] pixel anchors of the crop shape.
        scale: the crops' resize scale (sizes are reported in original pixels).

    Returns:
        list of dicts (one per non-empty bucket) with area_px, boxes, median_best_iou,
        anchors_iou_0.5, anchors_iou_0.7.
    """
    from mrcnn.ops.boxes import compute_overlaps
    best, n5, n7, areas = [], [], [], []
    for boxes in boxes_per_crop:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            continue
        overlaps = compute_overlaps(anchors, boxes)
        best.append(overlaps.max(axis=0))
        n5.append((overlaps >= 0.5).sum(axis=0))
        n7.append((overlaps >= 0.7).sum(axis=0))
        areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / scale ** 2)
    if not areas:
        return []
    best, n5, n7, areas = (np.concatenate(v) for v in (best, n5, n7, areas))
    bucket, names = size_buckets(areas, edges)
    rows = []
    for k, name in enumerate(names):
        sel = bucket == k
        if sel.any():
            rows.append({"area_px": name, "boxes": int(sel.sum()),
                         "median_best_iou": float(np.median(best[sel])),
                         "anchors_iou_0.5": float(n5[sel].mean()),
                         "anchors_iou_0.7": float(n7[sel].mean())})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--subset", default="train")
    parser.add_argument("--crops", type=int, default=150)
    parser.add_argument("--scales-per-octave", default="1,2")
    parser.add_argument("--scale-multipliers", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args()

    from mrcnn.config import anchor_settings
    from mrcnn.data.loader import load_image_gt
    from mrcnn.ops.anchors import pyramid_anchors
    from samples.nucleus.cli_common import make_config, parse_overrides
    from samples.nucleus.cli_train import SCRATCH_OVERRIDES
    from samples.nucleus.nucleus import NucleusDataset

    overrides = {**SCRATCH_OVERRIDES, **parse_overrides(args.set)}
    config = make_config(overrides)
    dataset = NucleusDataset().load_nucleus(args.dataset, args.subset)
    dataset.prepare()
    rng = np.random.RandomState(args.seed)
    boxes, shape = [], None
    for _ in range(args.crops):
        image, _, _, crop_boxes, _ = load_image_gt(dataset, config, rng.choice(dataset.image_ids),
                                                   rng=rng)
        boxes.append(crop_boxes)
        shape = image.shape
    scale = float(config.IMAGE_MIN_SCALE or 1.0)
    print(f"{args.crops} {args.subset} crops of {shape[0]}x{shape[1]} (x{scale:g}); box area "
          "in px of the original image")
    for per_octave in (int(v) for v in args.scales_per_octave.split(",")):
        for multiplier in (float(v) for v in args.scale_multipliers.split(",")):
            settings = anchor_settings(make_config({
                **overrides, "RPN_ANCHOR_SCALES_PER_OCTAVE": per_octave,
                "RPN_ANCHOR_SCALES": [s * multiplier for s in config.RPN_ANCHOR_SCALES]}))
            anchors = pyramid_anchors(shape, **settings)
            print(f"== {per_octave} per octave, sides x{multiplier:g} "
                  f"({[round(s, 1) for s in settings['scales']]}), {len(anchors)} anchors")
            for row in coverage(boxes, anchors, scale):
                print(f"   area {row['area_px']:>9} px: {row['boxes']:5d} boxes, median best "
                      f"IoU {row['median_best_iou']:.2f}, anchors at IoU >= 0.5 "
                      f"{row['anchors_iou_0.5']:.1f}, >= 0.7 {row['anchors_iou_0.7']:.2f}")


if __name__ == "__main__":
    main()
