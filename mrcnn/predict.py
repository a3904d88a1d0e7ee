"""Segment any folder of images: a label image, an overlay and measurements per image.

    from mrcnn.predict import predict_images
    summary = predict_images(model, "scans/*.tif", "out/")   # a MaskRCNN in inference mode,
                                                             # or predict(image) -> masks, scores

Writes, for every input image (a file, a folder — ``recursive`` for sub-folders — or a glob):

* ``labels/<name>.tif`` (or ``.png``): uint16 label image, 0 = background, one id per object
  (1 = the highest score); overlapping masks are resolved by score;
* ``overlays/<name>.png``: the objects tinted over the image;
* ``objects/<name>.csv``: one row per object (image, object id, score, area, centroid, bbox,
  mean intensity of the original image's pixels);

and at the end ``objects.csv`` (all rows) and ``summary.csv`` (image, count, seconds, status).
It streams (read, predict, write, forget), writes every file atomically, skips images whose
label image exists unless ``overwrite``, and reports and skips a file it cannot read.
"""

import csv
import glob
import logging
import os
import time

import imageio.v3 as iio
import keras
import numpy as np
import skimage.io
import skimage.measure
import tifffile

from mrcnn.atomic import atomic_target
from mrcnn.evaluation import write_json
from mrcnn.metrics import coco_results, remove_overlaps
from mrcnn.ops.image import to_rgb_uint8
from mrcnn.visualize import overlay_labels

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_FORMATS = ("tif", "png")
OBJECT_COLUMNS = ["image", "object_id", "score", "area", "centroid_y", "centroid_x",
                  "bbox_y1", "bbox_x1", "bbox_y2", "bbox_x2", "mean_intensity"]
SUMMARY_COLUMNS = ["image", "count", "seconds", "status"]


def find_images(spec, recursive=False):
    """Image paths of ``spec``: a file, a folder (its images; with ``recursive`` those of its
    sub-folders too) or a glob pattern. Sorted.

    Raises:
        FileNotFoundError: nothing matches.
    """
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        pattern = os.path.join(spec, "**", "*") if recursive else os.path.join(spec, "*")
        paths = glob.glob(pattern, recursive=recursive)
    else:
        paths = glob.glob(spec, recursive=recursive)
    paths = sorted(p for p in paths if os.path.isfile(p)
                   and p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"--input {spec}: no image files ({', '.join(IMAGE_EXTENSIONS)})"
                                + ("" if recursive else "; add --recursive for sub-folders"))
    return paths


def _channels_last(array):
    """TIFF stacks often come channels-first ([C, H, W]); bring small leading axes last."""
    if array.ndim == 3 and array.shape[0] <= 8 and array.shape[-1] > 8:
        return np.moveaxis(array, 0, -1)
    return array


def read_image(path, channels=None):
    """Read an image file as stored (8/16-bit, grayscale, RGB, RGBA, extra channels).

    TIFFs are read with tifffile, everything else with imageio. ``channels`` picks channels by
    index (``[0]`` for the nuclear stain of a multi-channel TIFF); without it, images with more
    than 4 channels are refused, RGBA keeps RGB.

    Returns:
        [H, W] or [H, W, C] array of the file's dtype.

    Raises:
        ValueError: unreadable, not 2-D, or a channel choice that does not fit; the message
            names the file.
    """
    try:
        if path.lower().endswith((".tif", ".tiff")):
            image = tifffile.imread(path)
        else:
            image = iio.imread(path)
    except Exception as err:  # every reader raises its own types
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    image = _channels_last(np.squeeze(np.asarray(image)))
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"{path}: not a 2-D image (array shape {image.shape}); for stacks, "
                         "save one plane per file")
    if channels is not None:
        image = image[..., None] if image.ndim == 2 else image
        if max(channels) >= image.shape[-1]:
            raise ValueError(f"{path} has {image.shape[-1]} channel(s); --channels "
                             f"{','.join(map(str, channels))} does not fit")
        image = image[..., list(channels)]
    elif image.ndim == 3 and image.shape[-1] > 4:
        raise ValueError(f"{path} has {image.shape[-1]} channels; choose the nuclear stain "
                         "with --channels (e.g. --channels 0)")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def label_image(masks, scores):
    """Masks [H, W, N] and scores [N] -> (uint16 labels [H, W], scores of labels 1..K):
    overlaps go to the higher score, label 1 is the highest score."""
    masks, kept = remove_overlaps(masks, scores)
    scores = np.asarray(scores, dtype=np.float64)[kept]
    order = np.argsort(-scores, kind="stable")
    labels = np.zeros(masks.shape[:2], np.uint16)
    for label, i in enumerate(order, start=1):
        labels[masks[..., i]] = label
    return labels, scores[order]


def object_rows(name, labels, scores, intensity):
    """One measurement row per label (see OBJECT_COLUMNS); bbox y2/x2 exclusive, pixels."""
    rows = []
    for region in skimage.measure.regionprops(labels.astype(np.int32),
                                              intensity_image=intensity):
        y1, x1, y2, x2 = region.bbox
        cy, cx = region.centroid
        rows.append({"image": name, "object_id": region.label,
                     "score": round(float(scores[region.label - 1]), 4),
                     "area": int(region.area), "centroid_y": round(cy, 2),
                     "centroid_x": round(cx, 2), "bbox_y1": y1, "bbox_x1": x1, "bbox_y2": y2,
                     "bbox_x2": x2, "mean_intensity": round(float(region.intensity_mean), 3)})
    return rows


def _write_csv(path, columns, rows):
    with atomic_target(path, ".csv.tmp") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_label(path, labels):
    if path.endswith(".png"):
        if labels.dtype != np.uint16:
            raise ValueError(f"{path}: {int(labels.max())} objects do not fit a 16-bit PNG "
                             "label image; use the tif label format")
        with atomic_target(path, ".tmp.png") as tmp:
            skimage.io.imsave(tmp, labels, check_contrast=False)
    else:
        with atomic_target(path, ".tmp.tif") as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib")


def _as_predict_fn(model, tile=None, tile_overlap=128):
    """A MaskRCNN (its ``detect``, or :func:`mrcnn.tiling.predict_tiled` with ``tile``) or a
    ``predict(image) -> dict`` callable."""
    if hasattr(model, "detect"):
        if tile:
            from mrcnn.tiling import predict_tiled
            return lambda image: predict_tiled(model, image, tile, tile_overlap)
        return lambda image: model.detect([image])[0]
    if callable(model):
        return model
    raise TypeError(f"{model!r} is neither a MaskRCNN nor a predict(image) callable")


def labels_of(result):
    """(labels [H, W], scores of labels 1..K) of a prediction: its own label image when it has
    one (:func:`mrcnn.tiling.predict_tiled`), else :func:`label_image` of its masks."""
    if "labels" in result:
        return result["labels"], np.asarray(result["scores"], dtype=np.float64)
    return label_image(result["masks"], result["scores"])


def predict_images(model, inputs, out_dir, recursive=False, channels=None,
                   label_format="tif", overwrite=False, coco=False, progress=True,
                   tile=None, tile_overlap=128):
    """Segment every image of ``inputs`` and write the outputs described in the module
    docstring under ``out_dir``.

    Args:
        model: a MaskRCNN in inference mode, or ``predict(image uint8 [H, W, 3]) ->
            {"masks": [H, W, N] bool, "scores": [N]}`` (the U-Net and Otsu predictors) or
            ``{"labels": [H, W], "scores": [K]}`` (a tiled predictor).
        inputs: a file, a folder or a glob (see :func:`find_images`), or a list of paths.
        recursive: include sub-folders. channels: see :func:`read_image`.
        label_format: "tif" (uint16 TIFF) or "png" (uint16 PNG).
        overwrite: redo images whose label image exists.
        coco: also write ``coco_results.json`` (RLE masks of every image).
        progress: a progress bar with rate and ETA on stderr.
        tile, tile_overlap: a MaskRCNN predicts images larger than ``tile`` pixels on a side
            in overlapping tiles (:func:`mrcnn.tiling.predict_tiled`); None: whole images.

    Returns:
        dict: images, done (predicted now), already_done, failed (list of (path, reason)),
        objects, and the paths of objects.csv and summary.csv.
    """
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label format {label_format!r}; use one of {LABEL_FORMATS}")
    predict = _as_predict_fn(model, tile, tile_overlap)
    paths = list(inputs) if isinstance(inputs, (list, tuple)) else find_images(inputs, recursive)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    names = [os.path.splitext(os.path.relpath(os.path.abspath(p), root))[0] for p in paths]
    for sub in ("labels", "overlays", "objects"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    summary, failed, done, skipped_done, coco_rows = [], [], 0, 0, []
    for n, (path, name) in enumerate(zip(paths, names)):
        label_path = os.path.join(out_dir, "labels", f"{name}.{label_format}")
        rows_path = os.path.join(out_dir, "objects", f"{name}.csv")
        if not overwrite and os.path.exists(label_path) and os.path.exists(rows_path):
            skipped_done += 1
            summary.append({"image": name, "count": len(_read_csv(rows_path)), "seconds": "",
                            "status": "done before"})
        else:
            started = time.perf_counter()
            try:
                raw = read_image(path, channels)
            except ValueError as err:
                log.warning("skipping %s", err)
                failed.append((path, str(err)))
                summary.append({"image": name, "count": "", "seconds": "",
                                "status": f"unreadable: {err}"})
                if bar:
                    bar.update(n + 1)
                continue
            image = to_rgb_uint8(raw)
            labels, scores = labels_of(predict(image))
            intensity = raw.astype(np.float64)
            intensity = intensity if intensity.ndim == 2 else intensity.mean(axis=-1)
            rows = object_rows(name, labels, scores, intensity)
            for sub in (label_path, rows_path):
                os.makedirs(os.path.dirname(sub), exist_ok=True)
            _write_csv(rows_path, OBJECT_COLUMNS, rows)
            _write_overlay(os.path.join(out_dir, "overlays", f"{name}.png"), image, labels)
            _write_label(label_path, labels)         # last: its presence marks the image done
            if coco:  # RLE now, so memory stays flat however many images there are
                coco_rows += _coco_rows(name, labels, scores)
            done += 1
            summary.append({"image": name, "count": len(rows),
                            "seconds": round(time.perf_counter() - started, 3), "status": "ok"})
        if bar:
            bar.update(n + 1)
    objects = []
    for name in names:
        rows_path = os.path.join(out_dir, "objects", f"{name}.csv")
        if os.path.exists(rows_path):
            objects += _read_csv(rows_path)
    objects_csv = _write_csv(os.path.join(out_dir, "objects.csv"), OBJECT_COLUMNS, objects)
    summary_csv = _write_csv(os.path.join(out_dir, "summary.csv"), SUMMARY_COLUMNS, summary)
    if coco:
        write_json(os.path.join(out_dir, "coco_results.json"), coco_rows)
    return {"images": len(paths), "done": done, "already_done": skipped_done, "failed": failed,
            "objects": len(objects), "objects_csv": objects_csv, "summary_csv": summary_csv}


def _coco_rows(name, labels, scores, chunk=32):
    """COCO result rows (RLE masks) of labels 1..K, ``chunk`` masks at a time so a tiled image
    with thousands of objects never holds them all as full-size masks."""
    rows, count = [], int(labels.max())
    for start in range(1, count + 1, chunk):
        ids = np.arange(start, min(start + chunk, count + 1), dtype=labels.dtype)
        rows += coco_results([name], [labels[..., None] == ids], [scores[start - 1:ids[-1]]])
    return rows


def _write_overlay(path, image, labels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_target(path, ".tmp.png") as tmp:
        skimage.io.imsave(tmp, overlay_labels(image, labels), check_contrast=False)
