"""GroupNorm cost: Keras's GroupNormalization against backbones.normalization.FastGroupNormalization.

    python benchmarks/bench_group_norm.py [--layers] [--step] [--detect --logs RUNS] [--repeats 3]

``--layers``: 3x3 conv + GroupNorm + ReLU on tensors of the nucleus model's sizes (C2 of a
512x640 image at 2x scale, a training batch of two 256 px crops, a C4-like tensor), forward and
forward+backward, each implementation and the conv alone; median milliseconds, best of the
repeats. ``--step``: the nucleus from-scratch training step (benchmarks/bench_nucleus_step.py)
with each implementation. ``--detect --logs RUNS``: detect's parts (benchmarks/bench_detect_parts.py) with
a trained nucleus run on ``--limit`` val images. The implementations alternate within each repeat, so
a ratio is meaningful even when other work shares the CPU; absolute times are not then.
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import backbones.normalization as normalization  # noqa: E402

IMPLEMENTATIONS = {"keras": keras.layers.GroupNormalization,
                   "fast": normalization.FastGroupNormalization}


def _median_ms(fn, x, runs=15):
    fn(x)
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn(x)
        for tensor in tf.nest.flatten(result):
            if hasattr(tensor, "numpy"):
                tensor.numpy()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def layer_functions(shape, groups=32):
    conv = keras.layers.Conv2D(shape[-1], 3, padding="same")
    conv.build(shape)
    functions = {"conv only": lambda x: tf.nn.relu(conv(x))}
    for name, cls in IMPLEMENTATIONS.items():
        norm = cls(groups=groups)
        norm.build(shape)
        functions[name] = (lambda n: lambda x: tf.nn.relu(n(conv(x))))(norm)
    compiled = {}
    for name, fn in functions.items():
        compiled[name] = tf.function(fn)

        def grad(x, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(fn(x)))
            return tape.gradient(loss, [x, conv.kernel])
        compiled[name + " grad"] = tf.function(grad)
    return compiled


def bench_layers(repeats):
    for shape in [(1, 256, 320, 64), (2, 64, 64, 64), (1, 64, 80, 256)]:
        x = tf.random.normal(shape)
        functions = layer_functions(shape)
        best = {}
        for _ in range(repeats):
            for name, fn in functions.items():
                best[name] = min(best.get(name, np.inf), _median_ms(fn, x))
        print(f"{shape}: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()) + " ms",
              flush=True)


def _with_group_norm(name, build):
    """Run ``build()`` with backbones built using the GroupNorm implementation ``name``."""
    saved = normalization.FastGroupNormalization
    normalization.FastGroupNormalization = IMPLEMENTATIONS[name]  # what _replacement builds
    try:
        return build()
    finally:
        normalization.FastGroupNormalization = saved


def bench_step(args):
    import bench_nucleus_step
    dataset = bench_nucleus_step.load_dataset(args.dataset)
    best = {}
    for _ in range(args.repeats):
        for name in IMPLEMENTATIONS:
            seconds, _ = _with_group_norm(name, lambda: bench_nucleus_step.measure(dataset, {}))
            best[name] = min(best.get(name, np.inf), seconds)
    print("nucleus training step: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items()),
          flush=True)


def bench_detect(args):
    """Per-part detect medians (bench_detect_parts.profile) of a trained nucleus run on val
    images, built once with each implementation (the checkpoint's gamma/beta load into both)."""
    import bench_detect_parts
    from samples.nucleus.cli_eval import load_inference_model, load_subset
    dataset, ids = load_subset(args.dataset, "val", args.limit)
    images = [dataset.load_image(i) for i in ids]
    load_args = argparse.Namespace(logs=args.logs, weights="last", set=args.set, backbone=None,
                                  min_confidence=None, dataset=args.dataset)
    models = {name: _with_group_norm(name, lambda: load_inference_model(load_args))
              for name in IMPLEMENTATIONS}
    best = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            summary = bench_detect_parts.summarise(bench_detect_parts.profile(model, images))
            if name not in best or summary["detect"] < best[name]["detect"]:
                best[name] = summary
    for name, summary in best.items():
        print(f"nucleus detect, {name} GroupNorm, median of {len(images)} val images: " +
              ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--step", action="store_true")
    parser.add_argument("--detect", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logs", help="--detect: a nucleus run folder parent (--weights last)")
    parser.add_argument("--dataset", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
        "dsb2018"), help="--step, --detect: DSB2018 folder (--step falls back to synthetic "
                         "nuclei when it is missing)")
    parser.add_argument("--limit", type=int, default=10, help="--detect: val images")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if not (args.layers or args.step or args.detect):
        args.layers = args.step = True
        args.detect = bool(args.logs)
    if args.layers:
        bench_layers(args.repeats)
    if args.detect:
        bench_detect(args)
    if args.step:
        bench_step(args)


if __name__ == "__main__":
    main()
