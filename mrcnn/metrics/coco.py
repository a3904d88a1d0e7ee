"""COCO mask and box AP, AP50, AP75 through pycocotools.

Images are given as lists of ground-truth masks and predicted masks with scores; everything is
converted to COCO RLE in memory. ``maxDets`` is raised to 1000 because nuclei images often hold
more than COCO's default 100 objects.
"""

import contextlib
import io

import numpy as np

from mrcnn.ops.boxes import extract_bboxes

MAX_DETS = [10, 100, 1000]


def _encode(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box):
    y1, x1, y2, x2 = [float(v) for v in box]
    return [x1, y1, x2 - x1, y2 - y1]


def coco_annotations(image_index, masks, class_ids=None, scores=None, start_id=1):
    """COCO annotation (or result, when ``scores`` is given) dicts for one image."""
    masks = np.asarray(masks, dtype=bool)
    boxes = extract_bboxes(masks)
    out = []
    for k in range(masks.shape[-1]):
        if not masks[..., k].any():
            continue
        item = {"image_id": int(image_index),
                "category_id": int(class_ids[k]) if class_ids is not None else 1,
                "segmentation": _encode(masks[..., k]), "bbox": _xywh(boxes[k]),
                "area": float(masks[..., k].sum())}
        if scores is None:
            item.update(id=start_id + len(out), iscrowd=0)
        else:
            item["score"] = float(scores[k])
        out.append(item)
    return out


def coco_evaluate(true_masks, pred_masks, pred_scores, true_class_ids=None,
                  pred_class_ids=None, iou_types=("segm", "bbox")):
    """COCO AP (0.50:0.95), AP50 and AP75 for masks ("segm") and boxes ("bbox").

    Args:
        true_masks: list of [H, W, N_i] bool; pred_masks: list of [H, W, M_i] bool;
        pred_scores: list of [M_i]; class ids default to 1 (one foreground class).

    Returns:
        {"segm": {"ap", "ap50", "ap75"}, "bbox": {...}}; all 0.0 when nothing is predicted.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images, annotations, results = [], [], []
    categories = set()
    for i, (t, p, s) in enumerate(zip(true_masks, pred_masks, pred_scores)):
        t = np.asarray(t, dtype=bool)
        images.append({"id": i, "height": int(t.shape[0]), "width": int(t.shape[1])})
        tc = true_class_ids[i] if true_class_ids is not None else None
        pc = pred_class_ids[i] if pred_class_ids is not None else None
        annotations += coco_annotations(i, t, tc, start_id=len(annotations) + 1)
        results += coco_annotations(i, p, pc, scores=s)
    categories = sorted({a["category_id"] for a in annotations + results} or {1})
    empty = {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    if not results or not annotations:
        return {t: dict(empty) for t in iou_types}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": str(c)} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
    out = {}
    for iou_type in iou_types:
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.maxDets = list(MAX_DETS)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats
        out[iou_type] = {"ap": max(0.0, float(stats[0])), "ap50": max(0.0, float(stats[1])),
                         "ap75": max(0.0, float(stats[2]))}
    return out


def coco_results(image_ids, pred_masks, pred_scores, pred_class_ids=None):
    """A COCO results list (for a JSON file) for named images."""
    out = []
    for k, (image_id, masks, scores) in enumerate(zip(image_ids, pred_masks, pred_scores)):
        classes = pred_class_ids[k] if pred_class_ids is not None else None
        for item in coco_annotations(0, masks, classes, scores=scores):
            item["image_id"] = image_id
            out.append(item)
    return out
