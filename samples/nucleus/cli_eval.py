"""``train.py detect`` and ``train.py evaluate``: predictions, Kaggle submission, metrics.

Predictors share one signature, ``predict(image) -> {"masks": [H, W, N] bool, "scores": [N]}``
at the image's own resolution, so Mask R-CNN, the U-Net and the Otsu baseline are scored by
the same code (:func:`mrcnn.evaluation.evaluate_dataset`).
"""

import logging
import os
import time

import numpy as np

import skimage.filters
import skimage.measure
from skimage.io import imsave

from mrcnn import model as modellib
from mrcnn.atomic import atomic_target
from mrcnn.evaluation import (evaluate_dataset, format_metrics, with_blur, with_exposure,
                              with_rescale, with_stain_scale, write_json)
from mrcnn.metrics import coco_results, mask_to_rle, remove_overlaps, write_submission
from mrcnn.ops.image import resize_array
from mrcnn.predict import LABEL_FORMATS, find_images, predict_images
from mrcnn.tiling import predict_tiled, result_masks
from mrcnn.tta import detect_with_flips
from mrcnn.visualize import overlay_instances
from samples.nucleus.cli_common import (load_run_overrides, make_config, parse_overrides,
                                        peak_memory_mb, resolve_checkpoint, unlabelled_policy)
from samples.nucleus.cli_unet import unet_predictor
from samples.nucleus.nucleus import NucleusDataset, image_kind

log = logging.getLogger("nucleus")


def load_inference_model(args):
    """The trained Mask R-CNN of --weights/--logs in inference mode, rebuilt from its run's
    run_config.json with --backbone, --min-confidence and --set on top."""
    path = resolve_checkpoint(args.weights, args.logs)
    overrides = load_run_overrides(path)
    if args.backbone:
        overrides["BACKBONE"] = args.backbone
    if args.min_confidence is not None:
        overrides["DETECTION_MIN_CONFIDENCE"] = args.min_confidence
    overrides.update(parse_overrides(args.set))
    config = make_config(overrides, inference=True)
    model = modellib.MaskRCNN("inference", config, args.logs)
    model.load_weights(path, by_name=True)
    log.info("Mask R-CNN %s from %s (min confidence %.2f)", config.BACKBONE, path,
             config.DETECTION_MIN_CONFIDENCE)
    return model


def run_export(args):
    """``train.py export``: the trained model as a SavedModel (serve(image) -> detections)."""
    path = load_inference_model(args).export(args.out, format=args.format)
    print(f"SavedModel written to {path}: tf.saved_model.load(path).serve(image uint8 "
          "[H, W, C]) -> boxes, class_ids, scores, masks")
    return path


def maskrcnn_predictor(args):
    """``predict(image) -> {"masks", "scores"}`` of a trained Mask R-CNN checkpoint."""
    model = load_inference_model(args)

    tta = getattr(args, "tta", False)
    if tta:
        log.info("test-time augmentation: 4 flips per image, objects at least 2 views agree on")

    tile = getattr(args, "tile", None)

    def predict(image):
        if tile:   # a label image; the whole image in one call when it fits in a tile
            return predict_tiled(model, image, tile, args.tile_overlap, tta=tta)
        r = detect_with_flips(model.detect, image) if tta else model.detect([image])[0]
        return {"masks": r["masks"], "scores": r["scores"]}
    predict.num_params = model.keras_model.count_params()
    return predict


def otsu_predictor(args=None):
    """The classical baseline: Otsu threshold (dark nuclei on light backgrounds are inverted)
    and connected components, objects under 10 pixels dropped."""

    def predict(image):
        gray = image[..., :3].mean(axis=-1) if image.ndim == 3 else image.astype(np.float64)
        if np.median(gray) > 127:  # brightfield / histology: nuclei darker than background
            gray = gray.max() - gray
        if gray.max() == gray.min():
            return {"masks": np.zeros(gray.shape + (0,), bool), "scores": np.zeros(0)}
        labels = skimage.measure.label(gray > skimage.filters.threshold_otsu(gray))
        ids = [r.label for r in skimage.measure.regionprops(labels) if r.area >= 10]
        masks = labels[..., None] == np.array(ids, dtype=labels.dtype).reshape(1, 1, -1)
        return {"masks": masks, "scores": np.ones(len(ids))}
    predict.num_params = 0
    return predict


def make_predictor(args):
    tile, overlap = getattr(args, "tile", 0), getattr(args, "tile_overlap", 0)
    if tile and tile <= overlap:
        raise SystemExit(f"--tile {tile} must be larger than --tile-overlap {overlap} "
                         "(or 0 for whole images)")
    model = getattr(args, "model", "maskrcnn")
    if model == "otsu":
        return otsu_predictor(args)
    if model == "unet":
        return unet_predictor(args)
    return maskrcnn_predictor(args)


def add_checkpoint_arguments(parser, subset="val", overrides=True):
    """The benchmarks' shared options: ``--logs`` and ``--weights`` (the checkpoint
    :func:`load_inference_model` loads), ``--dataset`` and ``--subset`` (the images
    :func:`load_subset` reads) and, with ``overrides``, ``--set KEY=VALUE``. The namespace
    also gets ``backbone`` and ``min_confidence`` (None: the run's own), which
    :func:`load_inference_model` reads."""
    parser.add_argument("--logs", required=True, help="nucleus run folder parent")
    parser.add_argument("--weights", default="last")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--subset", default=subset)
    if overrides:
        parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.set_defaults(backbone=None, min_confidence=None)


def load_subset(dataset_dir, subset, limit=None, unlabelled="allow"):
    dataset = NucleusDataset().load_nucleus(dataset_dir, subset, unlabelled)
    dataset.prepare()
    ids = list(dataset.image_ids)
    return dataset, ids[:limit] if limit else ids


def time_at_sizes(predict, image, sizes, repeats=3):
    """{"512": median seconds of ``predict`` on ``image`` resized to 512 x 512, ...}; each size
    is predicted once untimed first (graph tracing)."""
    out = {}
    for size in sizes:
        square = resize_array(image, (size, size))
        predict(square)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict(square)
            times.append(time.perf_counter() - start)
        out[str(size)] = float(np.median(times))
        log.info("predict on a %d x %d image: %.3f s", size, size, out[str(size)])
    return out


def run_evaluate(args):
    dataset, ids = load_subset(args.dataset, args.subset, args.limit, unlabelled_policy(args))
    predict = make_predictor(args)
    exposure = args.exposure
    if exposure != 1.0:
        log.info("every image's pixel values multiplied by %g before prediction", exposure)
        predict = with_exposure(predict, exposure)
    rescale = args.rescale
    if rescale != 1.0:
        log.info("every image resized by %g before prediction (masks resized back)", rescale)
        predict = with_rescale(predict, rescale)
    stain_scale = tuple(getattr(args, "stain_scale", None) or (1.0, 1.0))
    if stain_scale != (1.0, 1.0):
        log.info("haematoxylin x%g and eosin x%g in every stained image before prediction",
                 *stain_scale)
        predict = with_stain_scale(predict, *stain_scale)
    blur = getattr(args, "blur", 0.0) or 0.0
    if blur:
        log.info("every image blurred by a Gaussian of sigma %g px before prediction", blur)
        predict = with_blur(predict, blur)
    metrics = evaluate_dataset(dataset, predict, ids, group_fn=image_kind)
    if getattr(args, "time_sizes", None):
        sizes = [int(s) for s in args.time_sizes.split(",") if s.strip()]
        metrics["seconds_at_size"] = time_at_sizes(predict, dataset.load_image(ids[0]), sizes)
    metrics.update(model=getattr(args, "model", "maskrcnn"), weights=args.weights,
                   subset=args.subset, params=int(getattr(predict, "num_params", 0)),
                   tta=bool(getattr(args, "tta", False)), exposure=exposure,
                   rescale=rescale, stain_scale=list(stain_scale), blur=blur,
                   peak_mb=peak_memory_mb())
    print(format_metrics(metrics))
    if args.out:
        write_json(args.out, metrics)
        print(f"metrics written to {args.out}")
    return metrics


def run_detect(args):
    dataset, ids = load_subset(args.dataset, args.subset, args.limit)
    predict = make_predictor(args)
    overlay_dir = os.path.join(args.out, "overlays")
    os.makedirs(overlay_dir, exist_ok=True)
    rows, results = [], []
    for n, image_id in enumerate(ids):
        name = dataset.image_info[image_id]["id"]
        image = dataset.load_image(image_id)
        masks, scores = result_masks(predict(image))
        masks, kept = remove_overlaps(masks, scores)
        scores = scores[kept]
        rows += mask_to_rle(name, masks, scores)
        results += coco_results([name], [masks], [scores])
        with atomic_target(os.path.join(overlay_dir, f"{name}.png"), ".tmp.png") as tmp:
            imsave(tmp, overlay_instances(image, masks), check_contrast=False)
        log.info("%d/%d %s: %d nuclei", n + 1, len(ids), name, masks.shape[-1])
    submission = write_submission(os.path.join(args.out, "submission.csv"), rows)
    coco_path = write_json(os.path.join(args.out, "coco_results.json"), results)
    print(f"{len(ids)} images: submission {submission}, COCO results {coco_path}, "
          f"overlays {overlay_dir}")


def run_predict(args):
    """``train.py predict``: label images, overlays and measurements for any images."""
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    paths = find_images(args.input, args.recursive)
    predict = make_predictor(args)
    summary = predict_images(predict, paths, args.out, channels=channels,
                             label_format=args.label_format, overwrite=args.overwrite,
                             coco=args.coco, progress=True)
    print(f"{summary['images']} images: {summary['done']} segmented, {summary['already_done']} "
          f"done before (--overwrite redoes them), {len(summary['failed'])} unreadable and "
          f"skipped; {summary['objects']} objects in {summary['objects_csv']}, per-image "
          f"counts in {summary['summary_csv']}")
    for path, reason in summary["failed"]:
        print(f"  skipped {path}: {reason}")
    return summary


def add_predict_arguments(parser):
    parser.add_argument("--input", required=True,
                        help="an image file, a folder of images or a glob ('scans/*.tif')")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--recursive", action="store_true", help="include sub-folders")
    parser.add_argument("--channels", default=None, metavar="I[,J,K]",
                        help="channel indices to use (e.g. 0 for the nuclear stain of a "
                             "multi-channel TIFF); needed for more than 4 channels")
    parser.add_argument("--label-format", choices=LABEL_FORMATS, default="tif",
                        help="uint16 label images as TIFF (default) or PNG")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo images whose outputs exist (a rerun skips them otherwise)")
    parser.add_argument("--coco", action="store_true", help="also write coco_results.json")
    add_predictor_arguments(parser, None, dataset=False, tile=1024)


def add_predictor_arguments(parser, default_subset, dataset=True, tile=0):
    if dataset:
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--subset", default=default_subset)
    parser.add_argument("--tile", type=int, default=tile, metavar="PIXELS",
                        help="Mask R-CNN: predict images larger than this on a side in "
                             "overlapping tiles of at most this size (memory stays bounded and "
                             "DETECTION_MAX_INSTANCES applies per tile); 0: whole images "
                             "(default %(default)s)")
    parser.add_argument("--tile-overlap", type=int, default=128, metavar="PIXELS",
                        help="pixels neighbouring tiles share; objects up to this size across "
                             "are never cut (default %(default)s)")
    parser.add_argument("--model", choices=("maskrcnn", "unet", "otsu"), default="maskrcnn")
    parser.add_argument("--weights", default="last", help="last | PATH (default %(default)s)")
    parser.add_argument("--logs", default="logs")
    parser.add_argument("--backbone", default=None, help="only when the run has no config")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="DETECTION_MIN_CONFIDENCE (default: the config's)")
    parser.add_argument("--tta", action="store_true",
                        help="Mask R-CNN: detect on the 4 flips of each image and keep the "
                             "objects at least 2 views agree on (4x the inference time)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    if dataset:
        parser.add_argument("--limit", type=int, default=None, help="first N images only")
        parser.add_argument("--skip-unlabelled", action="store_true",
                            help="evaluate: leave out (and log) images whose masks/ folder is "
                                 "missing or empty, instead of stopping with an error")
