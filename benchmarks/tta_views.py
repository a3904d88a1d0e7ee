"""Test-time views of a nucleus model, scored per image against the plain ``detect``: other
scales alone, the scales fused, the four flips of ``--tta``, and the half-scale pass's large
detections pooled in (HALF_SCALE_PASS_MIN_AREA).

    python benchmarks/tta_views.py --logs runs/intel_f32 --dataset ../shared/data/dsb2018 \\
        --subset train --every 5 [--scales 0.8,1.25] [--flip-views none,h,v,hv] \\
        [--pool-areas 400,800] [--set COMPUTE_DTYPE=float32] [--out views.json]

``--scales ""``, ``--flip-views ""`` or ``--pool-areas ""`` leaves that family out.

A scale is relative to the one the config's rule gives each image (``Detector.default_scale``,
x2 for most DSB2018 images), detected with ``Detector.detect_at``; fused views go through
``mrcnn.tta.fuse_detections`` (the same nucleus when masks overlap at IoU > 0.5; kept when
``votes`` views find it; its mask the pixels half of its views cover). ``half_pool<A>`` is
what ``detect`` returns with HALF_SCALE_PASS_MIN_AREA = A (``mrcnn.inference.pool_detections``
of the plain detections and those at half the scale). Every variant is scored as ``evaluate``
scores it, overlaps removed by score first. Prints, for every
variant, the mean DSB score, the paired per-image difference to ``plain`` with its standard
error, how many images got better and worse, and the difference per image kind. The JSON
(``--out``) holds each image's id, kind and scores.
"""

import argparse
import json

import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.inference import pool_detections
from mrcnn.metrics import dsb_image_score, remove_overlaps
from mrcnn.tta import DEFAULT_VIEWS, detect_with_flips, fuse_detections
from samples.nucleus.cli_eval import add_checkpoint_arguments, load_inference_model, load_subset
from samples.nucleus.nucleus import image_kind


def parse_floats(text):
    return [float(v) for v in text.split(",") if v]


def reusing_plain(detect_fn, plain, views):
    """``detect_fn`` for :func:`mrcnn.tta.detect_with_flips`'s views, except that the unflipped
    view ("none") gets ``plain``, the detections already made on the image, instead of a
    second identical detect."""
    def detect_views(images):
        others = [image for image, view in zip(images, views) if view != "none"]
        detected = iter(detect_fn(others) if others else [])
        return [plain if view == "none" else next(detected) for view in views]
    return detect_views


def scored(true_masks, result):
    """The DSB score of a detect dict once overlaps are removed by score (as ``evaluate``)."""
    masks, _ = remove_overlaps(result["masks"], result["scores"])
    return dsb_image_score(true_masks, masks)


def view_scores(true_masks, plain, by_scale, flipped=None, pooled=None):
    """One image's DSB score for each variant.

    Args:
        true_masks: [H, W, N] bool.
        plain: the ``detect`` dict at the rule's scale; ``by_scale``: {factor: detect dict}
            at the other scales (masks [H, W, M] bool in the original image's pixels).
        flipped: the fused four-flip dict, or None.
        pooled: {min_area: detect dict} of the half-scale pass pooled in, or None.

    Returns:
        {variant name: score}: ``plain``, ``x<f>`` for each scale alone, ``scales_2votes`` and
        ``scales_1vote`` (all scales with the plain view, kept when 2 or 1 of them agree),
        ``flips``, ``half_pool<A>``.
    """
    scores = {"plain": scored(true_masks, plain)}
    for factor, result in by_scale.items():
        scores[f"x{factor:g}"] = scored(true_masks, result)
    if by_scale:
        views = [plain] + list(by_scale.values())
        for votes, name in ((2, "scales_2votes"), (1, "scales_1vote")):
            fused = fuse_detections(views, min_votes=min(votes, len(views)))
            scores[name] = scored(true_masks, fused)
    if flipped is not None:
        scores["flips"] = scored(true_masks, flipped)
    for area, result in (pooled or {}).items():
        scores[f"half_pool{area:g}"] = scored(true_masks, result)
    return scores


def paired_summary(rows, baseline="plain"):
    """{variant: {"mean", "diff", "se", "better", "worse", "by_kind": {kind: diff}}} from rows
    of {"kind", "scores": {variant: score}}; ``diff`` is the mean per-image difference to
    ``baseline`` and ``se`` its standard error (0 for fewer than two images)."""
    out = {}
    kinds = sorted({r["kind"] for r in rows})
    for variant in rows[0]["scores"]:
        diffs = np.array([r["scores"][variant] - r["scores"][baseline] for r in rows])
        out[variant] = {
            "mean": float(np.mean([r["scores"][variant] for r in rows])),
            "diff": float(diffs.mean()),
            "se": float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0,
            "better": int((diffs > 0).sum()), "worse": int((diffs < 0).sum()),
            "by_kind": {k: float(np.mean([d for d, r in zip(diffs, rows) if r["kind"] == k]))
                        for k in kinds}}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser, subset="train")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the subset")
    parser.add_argument("--scales", type=parse_floats, default=[0.8, 1.25],
                        help="factors of the rule's scale (empty: none)")
    parser.add_argument("--flip-views", default=",".join(DEFAULT_VIEWS),
                        help="the flips fused as --tta fuses them (names of mrcnn.tta.FLIPS; "
                             "empty: none)")
    parser.add_argument("--pool-areas", type=parse_floats, default=[],
                        help="HALF_SCALE_PASS_MIN_AREA values to score (pixels; empty: none)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    flip_views = [v for v in args.flip_views.split(",") if v]

    model = load_inference_model(args)
    detector, config = model.detector, model.config
    if config.HALF_SCALE_PASS_MIN_AREA is not None:
        parser.error("plain must be one pass: leave HALF_SCALE_PASS_MIN_AREA off (--pool-areas "
                     "scores it)")
    cover = config.DETECTION_MAX_COVERED_FRACTION
    if args.pool_areas and cover is None:
        parser.error("--pool-areas needs DETECTION_MAX_COVERED_FRACTION set")
    dataset, ids = load_subset(args.dataset, args.subset)
    rows = []
    for image_id in ids[::args.every]:
        image = dataset.load_image(image_id)
        true_masks = dataset.load_mask(image_id)[0]
        rule = detector.default_scale(image.shape)
        plain = model.detect([image])[0]
        by_scale = {f: detector.detect_at([image], [rule * f])[0] for f in args.scales}
        flipped = (detect_with_flips(reusing_plain(model.detect, plain, flip_views), image,
                                     flip_views) if flip_views else None)
        pooled = None
        if args.pool_areas:
            half = by_scale.get(0.5) or detector.detect_at([image], [rule * 0.5])[0]
            pooled = {area: pool_detections(plain, half, area, cover,
                                            config.DETECTION_MIN_MASK_AREA)
                      for area in args.pool_areas}
        rows.append({"id": dataset.image_info[image_id]["id"], "kind": image_kind(image),
                     "scores": view_scores(true_masks, plain, by_scale, flipped, pooled)})
    summary = paired_summary(rows)
    print(f"{len(rows)} images")
    for variant, s in summary.items():
        kinds = " ".join(f"{k} {v:+.4f}" for k, v in s["by_kind"].items())
        print(f"{variant:14s} DSB {s['mean']:.4f}  {s['diff']:+.4f} +- {s['se']:.4f} per image "
              f"({s['better']} better, {s['worse']} worse)  {kinds}")
    if args.out:
        with atomic_target(args.out) as tmp, open(tmp, "w") as f:
            json.dump({"summary": summary, "images": rows}, f, indent=1)


if __name__ == "__main__":
    main()
