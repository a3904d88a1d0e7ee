"""Where a nucleus training step's op time goes, by part of the model.

    python benchmarks/profile_step.py --weights RUN/nucleus.../mask_rcnn_nucleus_0086.weights.h5 \
        [--compute-dtype float32] [--steps 8] [--dataset ../shared/data/dsb2018] [--top 12] \
        [--detail "mask head"]

Builds the nucleus from-scratch training model (the CLI's defaults, ``SCRATCH_OVERRIDES``),
starts it from ``--weights`` (a trained checkpoint, so the RPN proposes real nuclei and the
mask head gets as many positive ROIs as late in a run; without it the heads see few),
runs ``--steps`` ``train_on_batch`` steps on augmented training crops (real DSB2018 crops
when ``--dataset`` exists, else synthetic nuclei) under TensorFlow's profiler, and prints
the op time per step of each part of the model, the op types and the layers that take most.

Op time is the wall time of each op on the executor threads that run ops (a kernel that
spreads its work over the intra-op threads counts once), summed; with two executor threads
running ops side by side it is larger than the step's wall time, so read shares, not totals.
An op belongs to the layer its name scope starts with (forward and gradient ops alike):
the backbone is every layer the pyramid's lateral convolutions depend on, the other parts
are named by layer-name prefixes (``PART_PREFIXES``), and a layer no prefix names (Keras's
``activation_9``, say) belongs to the part of the layer feeding it. Ops outside any layer are
``optimizer`` (the update of the weights) or ``losses and gradient sums``.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (part, layer-name prefixes), first match wins; the backbone is found from the graph.
PART_PREFIXES = (
    ("FPN", ("fpn_",)),
    ("RPN head", ("rpn_",)),
    ("proposals", ("ROI", "anchors")),
    ("detection targets", ("proposal_targets", "gt_boxes_normalized", "positive_rois",
                           "all_rois", "mask_targets", "mask_class_ids", "unflatten_rois")),
    ("mask head", ("mrcnn_mask", "roi_align_mask", "mask_image")),
    ("box head", ("mrcnn_class", "mrcnn_bbox", "roi_align_classifier", "pool_squeeze",
                  "box_context")),
    ("detections", ("mrcnn_detection", "detected_boxes")),     # inference graphs only
)
OPTIMIZER_SCOPES = ("adam_w", "adamw", "sgd", "SGD", "FusedAdamW")
LOSSES = "losses and gradient sums"
# The pyramid's lateral 1x1 convolutions: whatever they depend on is the backbone.
LATERAL = re.compile(r"fpn_c\dp\d$")


def _inbound_layer_names(layer_config):
    """Names of the layers whose outputs a layer of a functional ``get_config`` consumes."""
    names = []

    def visit(value):
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if isinstance(
                value.get("config"), dict) else None
            if history:
                names.append(history[0])
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(layer_config.get("inbound_nodes", []))
    return list(dict.fromkeys(names))


def layer_parts(keras_model):
    """{layer name: part} for every layer of a functional Mask R-CNN ``keras_model`` except
    its inputs, from its public ``get_config`` graph (see the module docstring)."""
    layers = keras_model.get_config()["layers"]
    inputs = {layer["name"]: _inbound_layer_names(layer) for layer in layers}
    is_input = {layer["name"] for layer in layers if layer["class_name"] == "InputLayer"}
    backbone = set()
    pending = [name for lateral in inputs if LATERAL.match(lateral) for name in inputs[lateral]]
    while pending:
        name = pending.pop()
        if name not in backbone and name not in is_input:
            backbone.add(name)
            pending.extend(inputs[name])
    parts = {}

    def part(name, seen=()):
        if name in parts:
            return parts[name]
        if name in backbone:
            return "backbone"
        for label, prefixes in PART_PREFIXES:
            if name.startswith(prefixes):
                return label
        feeding = [n for n in inputs.get(name, []) if n not in is_input and n not in seen]
        return part(feeding[0], seen + (name,)) if feeding else "other layers"

    for layer in layers:
        if layer["name"] not in is_input:
            parts[layer["name"]] = part(layer["name"])
    return parts


def scope_layer(scope, parts):
    """The model layer an op's name scope (``mask_rcnn_1/res2a_branch2a_1/convolution``,
    ``gradient_tape/mask_rcnn_1/fpn_p2_1/...``) runs in, or None outside any layer;
    ``parts`` (layer_parts) names the layers."""
    names = [n for n in scope.split("/") if n and n != "gradient_tape"]
    return next((candidate for name in names[:3]
                 for candidate in (name, re.sub(r"_\d+$", "", name)) if candidate in parts),
                None)


def scope_part(scope, parts, outside=LOSSES):
    """The part of an op from its name scope: ``optimizer`` (``adam_w/...``), else its
    layer's (:func:`scope_layer`), else ``outside`` (in a training step: the losses and
    gradient sums)."""
    if scope.startswith(OPTIMIZER_SCOPES):
        return "optimizer"
    layer = scope_layer(scope, parts)
    return outside if layer is None else parts[layer]


def op_events(xspace):
    """(name scope, op type, milliseconds) of every op the profile's executor threads ran."""
    events = []
    for plane in xspace.planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name:
                    continue
                scope, op_type = name.rsplit(":", 1)
                if op_type == "Process" or scope.startswith("ExecutorState"):
                    continue                       # the executor's own spans around its ops
                events.append((scope, op_type, event.duration_ps / 1e9))
    return events


def load_xspace(logdir):
    """The XSpace of the newest profile under a ``tf.profiler`` log folder."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as err:                     # the module moved in other releases
        raise SystemExit(f"this TensorFlow has no tensorflow.tsl.profiler.protobuf: {err}")
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise SystemExit(f"the profiler wrote no .xplane.pb under {logdir}")
    xspace = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as handle:
        xspace.ParseFromString(handle.read())
    return xspace


def summarise(events, parts, steps, outside=LOSSES):
    """{"parts": Counter, "op_types": Counter, "layers": Counter} of ms per step (``steps``:
    how many the events cover); ops outside any layer under ``outside``."""
    by_part, by_type, by_layer = (collections.Counter() for _ in range(3))
    for scope, op_type, ms in events:
        part = scope_part(scope, parts, outside)
        by_part[part] += ms / steps
        by_type[op_type] += ms / steps
        by_layer[scope_layer(scope, parts) or part] += ms / steps
    return {"parts": by_part, "op_types": by_type, "layers": by_layer}


def print_summary(summary, unit, top):
    """Print :func:`summarise`'s split: every part, then the ``top`` op types and layers, in
    ms per ``unit`` (a step, an image) and as shares of the op time."""
    total = sum(summary["parts"].values())
    for title, key, count in (("part", "parts", None), ("op type", "op_types", top),
                              ("layer", "layers", top)):
        print(f"--- by {title} (ms per {unit}, share of op time)")
        for name, ms in summary[key].most_common(count):
            print(f"{ms:9.1f}  {100 * ms / total:5.1f} %  {name}")


def profiled_op_events(run):
    """Call ``run()`` under TensorFlow's profiler: :func:`op_events` of what it ran (the
    profile is written to a temporary folder, removed afterwards)."""
    import tensorflow as tf
    with tempfile.TemporaryDirectory(prefix="profile_") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        return op_events(load_xspace(logdir))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=os.path.join(ROOT, "..", "shared", "data", "dsb2018"))
    parser.add_argument("--weights", help="trained checkpoint to start from (by layer name)")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top", type=int, default=12, help="op types and layers listed")
    parser.add_argument("--detail", action="append", default=[], metavar="PART",
                        help="also list the ops (name scope: type) that take most of PART")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_nucleus_step import compiled_training_model, load_dataset
    from samples.nucleus.cli_common import make_config
    from samples.nucleus.cli_train import SCRATCH_OVERRIDES
    from mrcnn.data.augment import default_augmentation
    from mrcnn.data.generator import DataGenerator

    dataset = load_dataset(args.dataset)
    config = make_config(dict(SCRATCH_OVERRIDES, COMPUTE_DTYPE=args.compute_dtype))
    keras_model = compiled_training_model(config, args.weights)
    generator = DataGenerator(dataset, config, augmentation=default_augmentation(), seed=3)
    batches = [generator[i % len(generator)][0] for i in range(args.steps + 3)]
    for batch in batches[:3]:                      # trace, and oneDNN's first primitives
        keras_model.train_on_batch(batch)
    seconds = []
    for batch in batches[3:]:
        start = time.perf_counter()
        keras_model.train_on_batch(batch)
        seconds.append(time.perf_counter() - start)
    events = profiled_op_events(lambda: [keras_model.train_on_batch(b) for b in batches[3:]])
    parts = layer_parts(keras_model)
    summary = summarise(events, parts, args.steps)
    total = sum(summary["parts"].values())
    print(f"training step, {args.compute_dtype}: median {np.median(seconds):.3f} s unprofiled "
          f"over {args.steps} steps; op time {total:.0f} ms per step "
          f"({len(events)} ops profiled)")
    print_summary(summary, "step", args.top)
    for wanted in args.detail:
        ops = collections.Counter()
        for scope, op_type, ms in events:
            if scope_part(scope, parts) == wanted:
                ops[f"{scope}: {op_type}"] += ms / args.steps
        print(f"--- {wanted}: ops (ms per step)")
        for name, ms in ops.most_common(args.top):
            print(f"{ms:9.2f}  {name}")


if __name__ == "__main__":
    main()
