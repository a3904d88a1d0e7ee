"""GroupNorm cost: Keras's GroupNormalization against backbones.normalization.FastGroupNormalization
(and the same without its fused single-image inference path, "per-channel").

    python benchmarks/bench_group_norm.py [--layers] [--step] [--detect --logs RUNS] [--repeats 3]

``--layers``: 3x3 conv + GroupNorm + ReLU on tensors of the nucleus model's sizes (C2 of a
512x640 image at 2x scale, a training batch of two 256 px crops, a C4-like tensor), at
inference (``training=False``) and forward+backward in training, each implementation and the
conv alone; median milliseconds, best of the repeats. ``--step``: the nucleus from-scratch
training step (benchmarks/bench_nucleus_step.py) with Keras's and the fast GroupNorm.
``--detect --logs RUNS [--skip-keras]``: ``detect`` of a trained nucleus run on ``--limit``
val images, the implementations alternated per image (benchmarks/bench_detect_parts.py gives
the parts). The implementations alternate within each repeat, so a ratio is meaningful even
when other work shares the CPU; absolute times are not then.
"""

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import backbones.normalization as normalization  # noqa: E402

class PerChannelGroupNormalization(normalization.FastGroupNormalization):
    """FastGroupNormalization without the fused path: per-channel statistics at inference too
    (what it computed before the fused path existed)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=None)


IMPLEMENTATIONS = {"keras": keras.layers.GroupNormalization,
                   "per-channel": PerChannelGroupNormalization,
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
    functions = {"conv only": lambda x, training: tf.nn.relu(conv(x))}
    for name, cls in IMPLEMENTATIONS.items():
        norm = cls(groups=groups)
        norm.build(shape)
        functions[name] = (lambda n: lambda x, training: tf.nn.relu(n(conv(x),
                                                                        training=training)))(norm)
    compiled = {}
    for name, fn in functions.items():
        compiled[name] = tf.function(lambda x, fn=fn: fn(x, training=False))   # inference

        def grad(x, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(fn(x, training=True)))
            return tape.gradient(loss, [x, conv.kernel])
        if name != "per-channel":                  # the same training path as "fast"
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
        for name in ("keras", "fast"):        # "per-channel" trains as "fast" does
            seconds, _ = _with_group_norm(name, lambda: bench_nucleus_step.measure(dataset, {}))
            best[name] = min(best.get(name, np.inf), seconds)
    print("nucleus training step: " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items()),
          flush=True)


def bench_detect(args):
    """``detect`` seconds of a trained nucleus run on val images, built once with each
    implementation (the checkpoint's gamma/beta load into all). Per image, after two warm-up
    calls each, the implementations alternate ``--repeats`` times (order reversed every other
    time); prints each one's median over images of its per-image median and the median
    per-image ratio to the first, and checks that all detect as many nuclei."""
    from samples.nucleus.cli_eval import load_inference_model, load_subset
    dataset, ids = load_subset(args.dataset, "val", args.limit)
    load_args = argparse.Namespace(logs=args.logs, weights="last", set=args.set, backbone=None,
                                  min_confidence=None, dataset=args.dataset)
    names = ["per-channel", "fast"] if args.skip_keras else list(IMPLEMENTATIONS)
    models = {name: _with_group_norm(name, lambda: load_inference_model(load_args))
              for name in names}
    seconds = {name: [] for name in names}
    for image_id in ids:
        image = dataset.load_image(image_id)
        counts = {len(m.detect([image])[0]["scores"]) for m in models.values()}
        assert len(counts) == 1, f"the implementations detect {counts} nuclei"
        for model in models.values():
            model.detect([image])
        runs = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                models[name].detect([image])
                runs[name].append(time.perf_counter() - start)
        for name in names:
            seconds[name].append(float(np.median(runs[name])))
    first = np.array(seconds[names[0]])
    for name in names:
        ratio = float(np.median(np.array(seconds[name]) / first))
        print(f"nucleus detect, {name} GroupNorm, {len(ids)} val images: median "
              f"{np.median(seconds[name]):.4f} s, per-image ratio to {names[0]} {ratio:.3f}",
              flush=True)


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
    parser.add_argument("--skip-keras", action="store_true",
                        help="--detect: only per-channel and fast (Keras's is the slowest)")
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
