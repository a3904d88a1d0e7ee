"""Evaluate any instance-segmentation predictor on a Dataset with every metric at once.

Used by ``samples/nucleus/train.py evaluate`` and ``compare`` for Mask R-CNN, the U-Net and the
Otsu baseline alike, so all models are scored by the same code on the same images.
"""

import json
import logging
import time

import numpy as np

from mrcnn.atomic import atomic_target
from mrcnn.data.loader import load_full_masks
from mrcnn.metrics import (coco_evaluate, compute_ap, dice, dsb_image_score, pixel_iou,
                           remove_overlaps)
from mrcnn.ops.image import resize_array, scale_stains
from mrcnn.tiling import result_masks

log = logging.getLogger(__name__)


def evaluate_dataset(dataset, predict, image_ids=None, warmup=1, group_fn=None,
                     log_every=10):
    """Run ``predict`` on every image and score it against the dataset's masks.

    Args:
        dataset: a prepared Dataset whose load_mask gives the truth.
        predict: ``fn(image [H, W, C] uint8) -> {"masks": [H, W, N] bool, "scores": [N]}``
            at the image's original resolution (or {"labels": [H, W], "scores": [K]}, see
            :func:`mrcnn.tiling.result_masks`).
        image_ids: subset of dataset.image_ids (default all).
        warmup: untimed predictions on the first image before timing (graph tracing).
        group_fn: optional ``fn(image) -> str`` (e.g. the image kind) for per-group scores.

    Overlapping predicted masks are resolved by score first, as a Kaggle submission must be.

    Returns:
        dict with dsb_score, iou, dice (means over images), voc_ap50 (Matterport's mAP at
        IoU 0.5), COCO mask ap/ap50/ap75 and box_ap/box_ap50, seconds_per_image (median) and
        mean_seconds_per_image, images, groups {name: {dsb_score, images}}, per_image list.
    """
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    if not ids:
        raise ValueError("no images to evaluate")
    first = dataset.load_image(ids[0])
    for _ in range(warmup):
        predict(first)
    per_image, trues, preds, scores, times = [], [], [], [], []
    for n, image_id in enumerate(ids):
        image = dataset.load_image(image_id)
        true, _ = load_full_masks(dataset, image_id, image)
        true = np.asarray(true, dtype=bool)
        start = time.perf_counter()
        result = predict(image)
        times.append(time.perf_counter() - start)
        masks, score = result_masks(result)
        masks, kept = remove_overlaps(masks, score)
        score = score[kept]
        ap50 = compute_ap(None, np.ones(true.shape[-1], np.int32), true, None,
                          np.ones(len(kept), np.int32), score, masks, 0.5)[0]
        row = {"image": str(dataset.image_info[image_id].get("id", image_id)),
               "dsb_score": dsb_image_score(true, masks), "iou": pixel_iou(true, masks),
               "dice": dice(true, masks), "voc_ap50": ap50, "true": int(true.shape[-1]),
               "predicted": int(masks.shape[-1]), "seconds": times[-1]}
        if group_fn is not None:
            row["group"] = group_fn(image)
        per_image.append(row)
        trues.append(true)
        preds.append(masks)
        scores.append(score)
        if log_every and (n + 1) % log_every == 0:
            log.info("evaluated %d/%d images, DSB score so far %.3f", n + 1, len(ids),
                     np.mean([r["dsb_score"] for r in per_image]))
    coco = coco_evaluate(trues, preds, scores)
    out = {"dsb_score": float(np.mean([r["dsb_score"] for r in per_image])),
           "ap": coco["segm"]["ap"], "ap50": coco["segm"]["ap50"], "ap75": coco["segm"]["ap75"],
           "box_ap": coco["bbox"]["ap"], "box_ap50": coco["bbox"]["ap50"],
           "voc_ap50": float(np.mean([r["voc_ap50"] for r in per_image])),
           "iou": float(np.mean([r["iou"] for r in per_image])),
           "dice": float(np.mean([r["dice"] for r in per_image])),
           "seconds_per_image": float(np.median(times)),
           "mean_seconds_per_image": float(np.mean(times)),
           "images": len(ids)}
    if group_fn is not None:
        groups = {}
        for r in per_image:
            groups.setdefault(r["group"], []).append(r["dsb_score"])
        out["groups"] = {g: {"dsb_score": float(np.mean(v)), "images": len(v)}
                         for g, v in sorted(groups.items())}
    out["per_image"] = per_image
    return out


def _keeping_num_params(wrapper, predict):
    """``wrapper`` with ``predict``'s parameter count (which evaluate reports), if it has one."""
    if hasattr(predict, "num_params"):
        wrapper.num_params = predict.num_params
    return wrapper


def _in_dtype(values, dtype):
    """Float ``values`` cast to ``dtype``, rounded and clipped to its range when it is an
    integer dtype (so bright pixels saturate instead of wrapping)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)


def with_exposure(predict, factor):
    """``predict`` on every image with its pixel values multiplied by ``factor`` (rounded and
    clipped to the range of an integer dtype, which is kept): how much a model's score depends
    on the exposure it was trained on (factor 0.5 = half the light)."""
    def predict_exposed(image):
        image = np.asarray(image)
        return predict(_in_dtype(image.astype(np.float64) * factor, image.dtype))
    return _keeping_num_params(predict_exposed, predict)


def with_stain_scale(predict, haematoxylin, eosin):
    """``predict`` on every image with its stains scaled (:func:`mrcnn.ops.image.scale_stains`:
    stained colour images only; fluorescence and brightfield images unchanged): how much a
    model's score depends on the staining of the histology it was trained on."""
    if haematoxylin <= 0 or eosin <= 0:
        raise ValueError(f"stain scales must be positive, got {haematoxylin}, {eosin}")

    def predict_restained(image):
        return predict(scale_stains(np.asarray(image), haematoxylin, eosin))
    return _keeping_num_params(predict_restained, predict)


def with_blur(predict, sigma):
    """``predict`` on every image blurred by a Gaussian of ``sigma`` pixels (of the image as
    given, each channel alike; the integer dtype is kept): how much a model's score depends on
    the focus of the images it was trained on (sigma 1-2 = a slightly defocused microscope)."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    from scipy.ndimage import gaussian_filter

    def predict_blurred(image):
        image = np.asarray(image)
        sigmas = (sigma, sigma) + (0,) * (image.ndim - 2)
        blurred = gaussian_filter(image.astype(np.float64), sigmas, mode="reflect")
        return predict(_in_dtype(blurred, image.dtype))
    return _keeping_num_params(predict_blurred, predict)


def with_rescale(predict, factor):
    """``predict`` on every image resized by ``factor`` (bilinear), its masks resized back to
    the image's own size (bilinear, then > 0.5, so no half-pixel shift) and scored against the
    original truth: how much a model's score depends on the magnification it was trained at
    (factor 0.7 = nuclei 30 % smaller, as from a lower-power objective)."""
    if factor <= 0:
        raise ValueError(f"rescale factor must be positive, got {factor}")

    def predict_rescaled(image):
        image = np.asarray(image)
        h, w = image.shape[:2]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        masks, scores = result_masks(predict(resize_array(image, size)))
        masks = np.asarray(masks, bool)
        back = np.zeros((h, w, masks.shape[-1]), bool)
        for start in range(0, masks.shape[-1], 64):     # bounded float memory
            chunk = masks[..., start:start + 64].astype(np.float32)
            back[..., start:start + 64] = resize_array(chunk, (h, w)).reshape(h, w, -1) > 0.5
        return {"masks": back, "scores": scores}
    return _keeping_num_params(predict_rescaled, predict)


def format_metrics(metrics):
    """One human-readable block of the headline numbers."""
    lines = [f"images:            {metrics['images']}",
             f"DSB2018 score:     {metrics['dsb_score']:.4f}",
             f"COCO mask AP:      {metrics['ap']:.4f}  AP50 {metrics['ap50']:.4f}  "
             f"AP75 {metrics['ap75']:.4f}",
             f"COCO box AP:       {metrics['box_ap']:.4f}  AP50 {metrics['box_ap50']:.4f}",
             f"VOC AP50 (Matterport compute_ap): {metrics['voc_ap50']:.4f}",
             f"pixel IoU:         {metrics['iou']:.4f}",
             f"Dice:              {metrics['dice']:.4f}",
             f"seconds per image: {metrics['seconds_per_image']:.3f} (median; mean "
             f"{metrics['mean_seconds_per_image']:.3f})"]
    for name, g in metrics.get("groups", {}).items():
        lines.append(f"  {name:12s} DSB {g['dsb_score']:.4f} on {g['images']} images")
    return "\n".join(lines)


def write_json(path, data):
    """Write JSON atomically (temporary file + rename)."""
    with atomic_target(path, ".json.tmp") as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    return path
