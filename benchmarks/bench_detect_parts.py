"""Where detect's time goes: molding, backbone + FPN, RPN head, the rest of the graph
(proposals, ROIAlign, box and mask heads, detections) and unmolding (mask pasting); with the
median number of proposals the box head classified and of detections.

    # a trained nucleus model on the DSB2018 validation images (median per image)
    python benchmarks/bench_detect_parts.py --logs runs/dsb58 --dataset ../shared/data/dsb2018 \
        [--set POST_NMS_ROIS_INFERENCE=1000 --set COMPUTE_DTYPE=float32]
    # the default Config with a random ResNet-50 at fixed sizes (as bench_detect.py)
    python benchmarks/bench_detect_parts.py --backbone resnet50 --sizes 512,1024
    # where the graph's op time goes, by part of the model, op type and layer (TF profiler)
    python benchmarks/bench_detect_parts.py --logs runs/dsb58 --dataset ../shared/data/dsb2018 \
        --limit 15 --ops [--top 20]

Each part is timed as a sub-model of the same inference graph (the backbone + FPN, and up to
the RPN head), so ``rest = graph - up to RPN``. Medians after one warm-up per image shape
(unmolding too). ``anchors`` is their computation for a new shape; ``detect`` reuses them.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf


def _timed(fn, repeats=1):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def part_models(keras_model):
    """(backbone+FPN, up-to-RPN) sub-models of an inference Mask R-CNN, on input_image."""
    image = keras_model.input["input_image"]
    pyramid = [keras_model.get_layer(f"fpn_p{i}").output for i in range(2, 7)]
    rpn = [keras_model.get_layer("rpn_class").output, keras_model.get_layer("rpn_bbox").output]
    return keras.Model(image, pyramid), keras.Model(image, rpn)


def profile(model, images, repeats=1):
    """Per-image seconds of each part, as medians over ``images``."""
    trunk, up_to_rpn = (tf.function(m, jit_compile=False, reduce_retracing=True)
                        for m in part_models(model.keras_model))
    rows = []
    for image in images:
        (molded, metas, windows), t_mold = _timed(lambda: model.mold_inputs([image]))
        anchors, t_anchors = _timed(lambda: model.get_anchors(molded.shape[1:]))
        x = tf.constant(molded)
        trunk(x), up_to_rpn(x), model.detector.run(molded, metas)     # warm-up of this shape
        _, t_trunk = _timed(lambda: [t.numpy() for t in trunk(x)], repeats)
        _, t_rpn = _timed(lambda: [t.numpy() for t in up_to_rpn(x)], repeats)
        out, t_graph = _timed(lambda: model.detector.run(molded, metas), repeats)

        def unmold():
            return model.unmold_detections(out["detections"][0], out["mrcnn_mask"][0],
                                           image.shape, molded.shape[1:], windows[0],
                                           image=image)
        unmold()                                         # warm-up, as the graph's
        _, t_unmold = _timed(unmold, repeats)
        _, t_detect = _timed(lambda: model.detect([image]), repeats)
        rows.append({"molded": "x".join(map(str, molded.shape[1:3])), "detect": t_detect,
                     "mold": t_mold, "anchors": t_anchors, "backbone_fpn": t_trunk,
                     "rpn_head": t_rpn - t_trunk,
                     # the graph call's anchors come from the detector's cache
                     "proposals_heads_detections": t_graph - t_rpn,
                     "unmold": t_unmold,
                     "proposals": int(np.any(out["rpn_rois"][0] != 0, axis=1).sum()),
                     "detections": int((out["detections"][0][:, 4] > 0).sum())})
    return rows


# Layers whose training-graph part (profile_step.PART_PREFIXES) is wrong at inference: there
# they only reshape the proposals for the box head.
INFERENCE_PARTS = {"all_rois": "box head", "unflatten_rois": "box head"}


def profile_ops(model, images):
    """Op time of the inference graph (``detector.run``) over ``images``, from TensorFlow's
    profiler, as ``benchmarks/profile_step.py`` splits a training step (the same part rules;
    ops outside any layer are "outside any layer").
    Ops run side by side on the executor's threads, so read shares, not totals.

    Returns:
        {"parts", "op_types", "layers"}: Counters of milliseconds per image (the mean over
        ``images``, so large images weigh more than in the per-image medians).
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from profile_step import layer_parts, profiled_op_events, summarise as split
    molded = [model.mold_inputs([image])[:2] for image in images]
    for batch, metas in molded:                      # trace and warm up every shape
        model.detector.run(batch, metas)
    events = profiled_op_events(lambda: [model.detector.run(b, m) for b, m in molded])
    parts = layer_parts(model.keras_model)
    parts.update((name, part) for name, part in INFERENCE_PARTS.items() if name in parts)
    return split(events, parts, len(images), outside="outside any layer")


def summarise(rows):
    keys = [k for k in rows[0] if k != "molded"]
    return {k: float(np.median([r[k] for r in rows])) for k in keys}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", help="nucleus run folder parent (--weights last in it)")
    parser.add_argument("--weights", default="last")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--subset", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--ops", action="store_true",
                        help="with --logs: the graph's op time by part, op type and layer")
    parser.add_argument("--top", type=int, default=12, help="op types and layers listed")
    args = parser.parse_args()
    if args.logs:
        from samples.nucleus.cli_eval import load_inference_model, load_subset
        args.backbone, args.min_confidence = None, None
        model = load_inference_model(args)
        dataset, ids = load_subset(args.dataset, args.subset, args.limit)
        if args.ops:
            from profile_step import print_summary
            summary = profile_ops(model, [dataset.load_image(i) for i in ids])
            print(f"detect graph, {model.config.COMPUTE_DTYPE}, {len(ids)} {args.subset} "
                  f"images: op time {sum(summary['parts'].values()):.0f} ms per image (mean)")
            print_summary(summary, "image", args.top)
            return
        rows = profile(model, [dataset.load_image(i) for i in ids])
        print(json.dumps({"config": args.set or [], "images": len(rows),
                          "compute_dtype": model.config.COMPUTE_DTYPE,
                          "median_seconds": summarise(rows)}, indent=1))
        return
    from mrcnn import model as modellib
    from mrcnn.config import Config

    for size in (int(s) for s in args.sizes.split(",")):
        class BenchConfig(Config):
            NAME = "bench"
            NUM_CLASSES = 2
            BACKBONE = args.backbone
            IMAGES_PER_GPU = 1
            IMAGE_MIN_DIM = IMAGE_MAX_DIM = size
            POST_NMS_ROIS_INFERENCE = 1000
            DETECTION_MAX_INSTANCES = 100
            DETECTION_MIN_CONFIDENCE = 0.0
        keras.utils.set_random_seed(0)
        model = modellib.MaskRCNN("inference", BenchConfig(), "/tmp/bench_logs")
        logits = model.keras_model.get_layer("mrcnn_class_logits")
        kernel, bias = logits.get_weights()     # every detection slot a real detection
        logits.set_weights([kernel * 0.01, bias + np.array([0.0, 5.0], np.float32)])
        image = np.random.RandomState(0).randint(0, 255, (size, size, 3)).astype(np.uint8)
        rows = profile(model, [image], repeats=5)
        print(json.dumps({"backbone": args.backbone, "size": size, **rows[0]}))


if __name__ == "__main__":
    main()
