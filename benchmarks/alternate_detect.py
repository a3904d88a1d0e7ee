"""Detect time of two inference settings of one nucleus checkpoint, alternated image by image,
so both see the machine's same hour (a 2-core cloud CPU drifts by 1.5x within an hour).

    python benchmarks/alternate_detect.py --logs runs/dsb --dataset ../shared/data/dsb2018 \\
        --a POST_NMS_ROIS_INFERENCE=1000 --b POST_NMS_ROIS_INFERENCE=500 \\
        [--common COMPUTE_DTYPE=float32] [--subset val] [--rounds 2]

Both models are built from the same checkpoint (each ``--a`` / ``--b`` / ``--common`` is a
``--set KEY=VALUE``, repeatable; ``--common`` starts from COMPUTE_DTYPE=float32 and a later
value wins) and warmed up on the first three images; then each round runs
``detect`` on every image with one setting and then the other (the order flips every round).
Prints the medians, the median per-image ratio b / a, and the means (first runs of a new image
size, about 1 s of graph preparation, lift the means, not the medians).
"""

import argparse
import json
import time

import numpy as np

from samples.nucleus.cli_eval import add_checkpoint_arguments, load_inference_model, load_subset


def timed_detect(model, image):
    start = time.perf_counter()
    model.detect([image])
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser, overrides=False)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--a", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--b", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--common", action="append", default=["COMPUTE_DTYPE=float32"],
                        metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    def model_for(sets):
        return load_inference_model(argparse.Namespace(**{**vars(args),
                                                          "set": args.common + sets}))

    models = {"a": model_for(args.a), "b": model_for(args.b)}
    dataset, ids = load_subset(args.dataset, args.subset, args.limit)
    images = [dataset.load_image(i) for i in ids]
    for model in models.values():
        for image in images[:3]:
            model.detect([image])
    seconds = {"a": [], "b": []}
    for round_index in range(args.rounds):
        order = ("a", "b") if round_index % 2 == 0 else ("b", "a")
        for image in images:
            for name in order:
                seconds[name].append(timed_detect(models[name], image))
    a, b = np.array(seconds["a"]), np.array(seconds["b"])
    print(json.dumps({"a": args.common + args.a, "b": args.common + args.b,
                      "images": len(images), "rounds": args.rounds,
                      "median_a": float(np.median(a)), "median_b": float(np.median(b)),
                      "median_ratio_b_over_a": float(np.median(b / a)),
                      "mean_a": float(a.mean()), "mean_b": float(b.mean())}, indent=1))


if __name__ == "__main__":
    main()
