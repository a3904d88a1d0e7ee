"""A large microscope field, predicted whole and in tiles: time, peak memory, objects found and
the DSB score against the truth.

    python benchmarks/bench_tiling.py --logs runs/intel_f32 --dataset ../shared/data/dsb2018 \\
        [--subset val] [--side 2048] [--tile 1024] [--overlap 128] [--set COMPUTE_DTYPE=float32]

The field is a mosaic of the subset's 256 x 256 images (seeded order, repeated as needed), with
their true nuclei as one label image. Each mode runs in its own process, so its peak resident
memory is its own:

* ``whole``: one ``detect`` call on the field (at most DETECTION_MAX_INSTANCES objects);
* ``tiled``: :func:`mrcnn.tiling.predict_tiled` with ``--tile`` and ``--overlap``;
* ``blocks``: every 256 px image of the mosaic detected on its own and pasted back, the
  reference (what the images score when they are not part of a larger field).

The DSB score is :func:`mrcnn.metrics.dsb_label_score` of the whole field's label images (one
image with thousands of nuclei, so the mean over thresholds of TP / (TP + FP + FN)).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

MODES = ("whole", "tiled", "blocks")
BLOCK = 256


def build_mosaic(dataset, ids, side, seed=0):
    """(image [side, side, 3] uint8, truth labels [side, side] int32) of BLOCK px images."""
    from mrcnn.data.loader import load_full_masks
    blocks = [i for i in ids if dataset.load_image(i).shape[:2] == (BLOCK, BLOCK)]
    if not blocks:
        raise SystemExit(f"the subset has no {BLOCK} x {BLOCK} images to build a field from")
    order = np.random.RandomState(seed).permutation(blocks)
    per_side = side // BLOCK
    image = np.zeros((per_side * BLOCK, per_side * BLOCK, 3), np.uint8)
    truth = np.zeros(image.shape[:2], np.int32)
    count = 0
    for n in range(per_side * per_side):
        image_id = order[n % len(order)]
        y, x = (n // per_side) * BLOCK, (n % per_side) * BLOCK
        block = dataset.load_image(image_id)
        masks, _ = load_full_masks(dataset, image_id, block)
        image[y:y + BLOCK, x:x + BLOCK] = block[..., :3]
        for k in range(masks.shape[-1]):
            count += 1
            truth[y:y + BLOCK, x:x + BLOCK][masks[..., k]] = count
    return image, truth


def run_mode(args):
    """The child process: load the model, warm up on one block, predict the field once."""
    from mrcnn.metrics import dsb_label_score
    from mrcnn.predict import label_image
    from mrcnn.tiling import predict_tiled
    from samples.nucleus.cli_eval import load_inference_model
    with np.load(args.field, allow_pickle=False) as data:
        image, truth = data["image"], data["truth"]
    model = load_inference_model(args)
    model.detect([image[:BLOCK, :BLOCK]])            # trace the graph
    start = time.perf_counter()
    if args.child == "whole":
        result = model.detect([image])[0]
        labels, _ = label_image(result["masks"], result["scores"])
        del result
    elif args.child == "tiled":
        labels = predict_tiled(model, image, args.tile, args.overlap)["labels"]
    else:
        labels = np.zeros(image.shape[:2], np.int32)
        for y in range(0, image.shape[0], BLOCK):
            for x in range(0, image.shape[1], BLOCK):
                detected = model.detect([image[y:y + BLOCK, x:x + BLOCK]])[0]
                block, _ = label_image(detected["masks"], detected["scores"])
                labels[y:y + BLOCK, x:x + BLOCK] = np.where(block > 0, block + labels.max(), 0)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({"mode": args.child, "seconds": round(seconds, 2),
                      "peak_rss_gb": round(peak_gb, 2), "objects": int(len(np.unique(labels)) - 1),
                      "true_objects": int(truth.max()),
                      "dsb": round(dsb_label_score(truth, labels), 4)}))


def main():
    from samples.nucleus.cli_eval import add_checkpoint_arguments
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--side", type=int, default=2048, help="field side, pixels")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--field", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_mode(args)
    from samples.nucleus.cli_eval import load_subset
    dataset, ids = load_subset(args.dataset, args.subset)
    image, truth = build_mosaic(dataset, ids, args.side)
    print(f"field {image.shape[1]} x {image.shape[0]} px of {BLOCK} px {args.subset} images, "
          f"{truth.max()} true nuclei; tile {args.tile}, overlap {args.overlap}")
    with tempfile.TemporaryDirectory() as folder:
        field = os.path.join(folder, "field.npz")
        np.savez(field, image=image, truth=truth)
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", mode,
                                  "--field", field], capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                print(f"{mode}: failed (exit {out.returncode})\n{out.stderr[-2000:]}")
                continue
            row = json.loads(lines[-1])
            print(f"{mode:7s} {row['seconds']:8.2f} s  peak RSS {row['peak_rss_gb']:5.2f} GB  "
                  f"{row['objects']:5d} of {row['true_objects']} objects  DSB {row['dsb']:.4f}")


if __name__ == "__main__":
    main()
