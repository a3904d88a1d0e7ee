"""TF Model Garden's Mask R-CNN (ResNet-50 FPN) detect time, to put beside bench_detect.py.

Needs a Python with ``tf-models-official`` (it brings its own TensorFlow and tf_keras; keep it
out of mrcnn's environment):

    python -m venv /tmp/tfm && /tmp/tfm/bin/pip install tf-models-official
    /tmp/tfm/bin/python benchmarks/bench_model_garden.py [--sizes 512,1024] [--box-head 4conv1fc]

Builds ``maskrcnn_resnetfpn_coco``'s model (float32, random weights, seeded) with the given
number of classes and box head, and times one image through ``model(images, image_shape,
training=False)`` inside a ``tf.function`` without XLA (its COCO config turns XLA on for
TPUs; mrcnn's detect does not use it either): the median of 5 after 2 warm-ups, as
bench_detect.py, and the same for the backbone and FPN alone. The class logits get a foreground
bias so that the 100 detection slots hold real detections, as bench_detect.py does for mrcnn.
Model Garden returns 28x28 masks per detection and does not paste them into the image; mrcnn's
``detect`` does (docs/speed.md). So ``detect_paste_s`` also times the whole
job as mrcnn's ``detect`` does it, image in and image-sized masks out: the graph, then Model
Garden's own ``mask_ops.paste_instance_masks`` on the detections (what its COCO evaluator calls).

``--box-head 4conv1fc`` is Model Garden's default (four 3x3 convs of 256 channels on every 7x7
ROI, then one 1024-wide fully connected layer); ``2fc`` is Matterport's and mrcnn's (two
1024-wide fully connected layers, no convs).
"""

import argparse
import json

import numpy as np

from bench_detect import _median_time  # the same warm-ups and median (NumPy only at import)


def build(size, num_classes, box_head, cpu_nms):
    import tensorflow as tf
    import tf_keras
    from official.vision.configs import maskrcnn as maskrcnn_cfg
    from official.vision.modeling import factory

    config = maskrcnn_cfg.maskrcnn_resnetfpn_coco().task.model
    config.num_classes = num_classes
    config.input_size = [size, size, 3]
    if box_head == "2fc":
        config.detection_head.num_convs = 0
        config.detection_head.num_fcs = 2
    if cpu_nms:
        config.detection_generator.use_cpu_nms = True
        config.roi_generator.use_batched_nms = True
    tf_keras.utils.set_random_seed(0)
    model = factory.build_maskrcnn(
        tf_keras.layers.InputSpec(shape=[None, size, size, 3]), config)
    images = tf.random.uniform([1, size, size, 3], seed=0)
    image_shape = tf.constant([[size, size]], tf.float32)
    model(images, image_shape, training=False)  # creates the weights
    (logits,) = [layer for layer in model.detection_head[0].submodules
                 if layer.name == "detection-scores"]
    kernel, bias = logits.get_weights()
    bias[1:] += 5.0
    logits.set_weights([kernel * 0.01, bias])
    return model, images, image_shape


def measure(size, num_classes, box_head, cpu_nms, warmups=2, repeats=5):
    import tensorflow as tf

    model, images, image_shape = build(size, num_classes, box_head, cpu_nms)
    run = tf.function(lambda x, s: model(x, s, training=False))
    outputs = run(images, image_shape)  # the first of the warm-ups (it traces)
    times = _median_time(lambda: run(images, image_shape)["detection_masks"].numpy(),
                         warmups - 1, repeats)
    features = tf.function(lambda x: model.decoder(model.backbone(x)))

    def detect_and_paste():
        from official.vision.ops import mask_ops
        out = run(images, image_shape)
        count = int(out["num_detections"][0])
        y1, x1, y2, x2 = (out["detection_boxes"][0, :count].numpy()[:, k] for k in range(4))
        return mask_ops.paste_instance_masks(out["detection_masks"][0, :count].numpy(),
                                             np.stack([x1, y1, x2 - x1, y2 - y1], axis=1),
                                             size, size)
    paste_times = _median_time(detect_and_paste, warmups, repeats)
    feature_times = _median_time(lambda: features(images)["2"].numpy(), warmups, repeats)
    return {"size": size, "num_classes": num_classes, "box_head": box_head, "cpu_nms": cpu_nms,
            "detect_s": times, "detect_paste_s": paste_times, "backbone_fpn_s": feature_times,
            "detections": int(outputs["num_detections"][0]),
            "params": int(model.count_params())}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--box-head", default="4conv1fc", choices=["4conv1fc", "2fc"])
    parser.add_argument("--cpu-nms", action="store_true",
                        help="its CPU NMS options: detection_generator.use_cpu_nms and "
                             "roi_generator.use_batched_nms (default: its TPU/GPU NMS)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (after 2 warm-ups)")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(measure(size, args.num_classes, args.box_head, args.cpu_nms,
                                 repeats=args.repeats)), flush=True)


if __name__ == "__main__":
    main()
