"""Nuclei with Mask R-CNN (and the U-Net / Otsu baselines): command-line entry point.

    python samples/nucleus/train.py train    --dataset DIR --subset train --weights none ...
    python samples/nucleus/train.py evaluate --dataset DIR --subset val --weights last
    python samples/nucleus/train.py detect   --dataset DIR --subset stage1_test --out DIR
    python samples/nucleus/train.py predict  --input 'scans/*.tif' --weights last --out DIR
    python samples/nucleus/train.py compare  --dataset DIR --models resnet18,unet,otsu ...
    python samples/nucleus/train.py demo     # synthetic nuclei, a few minutes on a CPU

``train.py <command> --help`` lists every flag. ``demo`` writes synthetic nuclei in the DSB2018
layout, trains briefly from scratch, detects on held-out images and prints the DSB score, COCO
AP, IoU, Dice, recall and where everything went.
"""

import argparse
import functools
import logging
import os
import sys
import time

import numpy as np

from mrcnn import model as modellib
from mrcnn.data.augment import default_augmentation
from mrcnn.data.synthetic import write_synthetic_dsb
from mrcnn.evaluation import evaluate_dataset, format_metrics, write_json
from mrcnn.metrics import mask_recall
from samples.nucleus.cli_compare import add_compare_arguments, run_compare
from samples.nucleus.cli_eval import (add_predict_arguments, add_predictor_arguments,
                                      run_detect, run_evaluate, run_export, run_predict)
from samples.nucleus.cli_train import add_train_arguments, run_train
from samples.nucleus.nucleus import NucleusConfig, NucleusDataset

log = logging.getLogger("nucleus")


class DemoConfig(NucleusConfig):
    """128 px synthetic images, trained from scratch on a CPU in minutes."""

    NAME = "nucleus_demo"
    IMAGES_PER_GPU = 2
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGE_MIN_SCALE = 0
    MEAN_PIXEL = np.array([90.0, 90.0, 90.0])
    TOP_DOWN_PYRAMID_SIZE = 128
    RPN_CONV_CHANNELS = 128
    MASK_HEAD_CHANNELS = 128
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    MINI_MASK_SHAPE = (28, 28)
    POST_NMS_ROIS_TRAINING = 300
    POST_NMS_ROIS_INFERENCE = 300
    PRE_NMS_LIMIT = 1000
    RPN_NMS_THRESHOLD = 0.7
    TRAIN_ROIS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 30
    DETECTION_MAX_INSTANCES = 50
    DETECTION_MIN_CONFIDENCE = 0.5
    BACKBONE_NORM = "group"  # from scratch with batches of 2 (see cli_train.SCRATCH_OVERRIDES)
    LEARNING_RATE_WARMUP_STEPS = 20
    STEPS_PER_EPOCH = 20
    VALIDATION_STEPS = 2


class DemoInferenceConfig(DemoConfig):
    IMAGES_PER_GPU = 1


def _two_floats(text):
    """``"0.7,1.3"`` -> (0.7, 1.3), for argparse."""
    values = [float(v) for v in text.split(",")]
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers H,E, got {text!r}")
    return tuple(values)


def run_demo(args):
    out = os.path.abspath(args.out)
    data_dir = os.path.join(out, "data")
    started = time.time()
    write_synthetic_dsb(data_dir, args.train_images, size=128, seed=0, subset="train_synthetic")
    write_synthetic_dsb(data_dir, 6, size=128, seed=10_000, subset="val_synthetic")
    train = NucleusDataset().load_nucleus(data_dir, "train_synthetic")
    val = NucleusDataset().load_nucleus(data_dir, "val_synthetic")
    train.prepare()
    val.prepare()

    config = DemoConfig()
    config.BACKBONE = args.backbone
    model = modellib.MaskRCNN("training", config, os.path.join(out, "logs"))
    log.info("Training %s from scratch (all layers, GroupNorm) for %d epochs",
             args.backbone, args.epochs)
    model.train(train, val, learning_rate=args.lr, epochs=args.epochs, layers="all",
                augmentation=default_augmentation(seed=0), seed=0, verbose=args.verbose)
    checkpoint = model.find_last()

    infer_config = DemoInferenceConfig()
    infer_config.BACKBONE = args.backbone
    infer = modellib.MaskRCNN("inference", infer_config, os.path.join(out, "logs"))
    infer.load_weights(checkpoint)

    def predict(image):
        r = infer.detect([image])[0]
        return {"masks": r["masks"], "scores": r["scores"]}
    metrics = evaluate_dataset(val, predict, log_every=0)
    found = total = 0
    for image_id in val.image_ids:
        predicted = predict(val.load_image(image_id))["masks"]
        f, n, _ = mask_recall(val.load_mask(image_id)[0], predicted)
        found, total = found + f, total + n
    write_json(os.path.join(out, "metrics.json"), {k: v for k, v in metrics.items()
                                                   if k != "per_image"})
    print(f"\nDemo finished in {time.time() - started:.0f} s")
    print(f"  held-out nuclei found (mask IoU > 0.5): {found}/{total} = {found / total:.2f}")
    print("  " + format_metrics(metrics).replace("\n", "\n  "))
    print(f"  data:        {data_dir}")
    print(f"  checkpoint:  {checkpoint}")
    print(f"  metrics:     {os.path.join(out, 'metrics.json')}")
    print(f"  TensorBoard: tensorboard --logdir {model.log_dir}")


# Errors the commands raise on purpose, each with a message naming the file, the value and
# the fix: printed as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, RuntimeError)


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error, not only its message")
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[common])
    demo = add("demo", help="train briefly on synthetic nuclei, detect, evaluate")
    demo.add_argument("--out", default="demo_nucleus", help="output folder (default %(default)s)")
    demo.add_argument("--backbone", default="resnet18")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--lr", type=float, default=0.01)
    demo.add_argument("--train-images", type=int, default=24)
    demo.add_argument("--verbose", type=int, default=2)
    train = add("train", help="train Mask R-CNN on a DSB2018-layout folder")
    add_train_arguments(train)
    evaluate = add("evaluate", help="DSB score, COCO AP, IoU, Dice, s/image")
    add_predictor_arguments(evaluate, "val")
    evaluate.add_argument("--out", default=None, help="write the metrics as JSON here")
    evaluate.add_argument("--time-sizes", default=None, metavar="S1,S2",
                          help="also time predict on the first image resized to S x S "
                               "(e.g. 512,1024)")
    evaluate.add_argument("--exposure", type=float, default=1.0, metavar="F",
                          help="multiply every image's pixel values by F before prediction "
                               "(robustness to exposure; default 1)")
    evaluate.add_argument("--rescale", type=float, default=1.0, metavar="F",
                          help="resize every image by F before prediction and the masks back "
                               "(robustness to magnification; default 1)")
    evaluate.add_argument("--stain-scale", type=_two_floats, default=None, metavar="H,E",
                          help="scale the haematoxylin and eosin amounts of every stained "
                               "(H&E colour) image by H and E before prediction, e.g. 0.7,1.3 "
                               "(robustness to staining; other images unchanged)")
    evaluate.add_argument("--blur", type=float, default=0.0, metavar="SIGMA",
                          help="blur every image by a Gaussian of SIGMA pixels before "
                               "prediction (robustness to focus; default 0, none)")
    detect = add("detect", help="submission.csv, COCO results, overlay PNGs")
    add_predictor_arguments(detect, "stage1_test")
    detect.add_argument("--out", required=True, help="output folder")
    predict = add("predict", help="label images, overlays and objects.csv for any images "
                                  "(PNG, JPEG, TIFF 8/16-bit, any channels)")
    add_predict_arguments(predict)
    export = add("export", help="the trained Mask R-CNN as a TensorFlow SavedModel")
    export.add_argument("--weights", default="last", help="last | PATH (default %(default)s)")
    export.add_argument("--logs", default="logs")
    export.add_argument("--out", required=True, help="SavedModel folder to write")
    export.add_argument("--format", default="saved_model",
                        help="saved_model (ONNX and LiteRT are refused with the reason)")
    export.add_argument("--backbone", default=None, help="only when the run has no config")
    export.add_argument("--min-confidence", type=float, default=None)
    export.add_argument("--set", action="append", metavar="KEY=VALUE")
    compare = add("compare", help="train + evaluate several models at one budget")
    add_compare_arguments(compare)
    return parser


COMMANDS = {"demo": run_demo, "train": run_train, "evaluate": run_evaluate,
            "detect": run_detect, "predict": run_predict, "export": run_export,
            "compare": run_compare}


def main(argv=None):
    """Run one command. A deliberate error (bad data, a missing file, a wrong flag value)
    prints ``error: <message>`` on one line and exits with status 2; ``--traceback`` shows
    the traceback too. Any other exception is a bug and propagates with its traceback."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        if args.traceback:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
