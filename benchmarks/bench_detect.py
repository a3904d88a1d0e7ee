"""Detect and training-step speed per backbone (random weights), with peak memory.

    python benchmarks/bench_detect.py [--backbones resnet50,mobilenet_v2] [--sizes 512,1024]
        [--rpn-channels 512] [--compute-dtype bfloat16]

Per backbone, in a fresh subprocess (so peak memory is its own): detect seconds per image at
each size (POST_NMS_ROIS_INFERENCE=1000, DETECTION_MAX_INSTANCES=100,
DETECTION_MIN_CONFIDENCE=0 so all 100 slots are real detections), and one training step at
512x512, batch 1, 20 ground-truth instances. Median of 5 after 2 warm-ups.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np



def _median_time(fn, warmups=2, repeats=5):
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(backbone, sizes, rpn_channels=None, compute_dtype=None):
    import keras

    from mrcnn import model as modellib
    from mrcnn.config import Config
    from mrcnn.data.dataset import Dataset
    from mrcnn.data.generator import DataGenerator

    class BenchConfig(Config):
        NAME = "bench"
        NUM_CLASSES = 2
        BACKBONE = backbone
        IMAGES_PER_GPU = 1
        IMAGE_RESIZE_MODE = "square"
        IMAGE_MIN_DIM = 512
        IMAGE_MAX_DIM = 512
        POST_NMS_ROIS_INFERENCE = 1000
        DETECTION_MAX_INSTANCES = 100
        DETECTION_MIN_CONFIDENCE = 0.0
        MAX_GT_INSTANCES = 20
        STEPS_PER_EPOCH = 1
        if rpn_channels:
            RPN_CONV_CHANNELS = rpn_channels
        if compute_dtype:
            COMPUTE_DTYPE = compute_dtype

    rng = np.random.RandomState(0)
    result = {"backbone": backbone}
    for size in sizes:
        config = BenchConfig()
        config.IMAGE_MIN_DIM = config.IMAGE_MAX_DIM = size
        config.__init__()
        # Seeded: the number of boxes surviving NMS depends on the random weights.
        keras.utils.set_random_seed(0)
        model = modellib.MaskRCNN("inference", config, "/tmp/bench_logs")
        # Random weights often score most ROIs as background, which leaves few detections and
        # times a cheaper path; a foreground bias makes every slot a real detection.
        logits = model.keras_model.get_layer("mrcnn_class_logits")
        kernel, bias = logits.get_weights()
        logits.set_weights([kernel * 0.01, bias + np.array([0.0, 5.0], np.float32)])
        image = rng.randint(0, 255, (size, size, 3)).astype(np.uint8)
        count = len(model.detect([image])[0]["class_ids"])
        result[f"detect_{size}_s"] = _median_time(lambda: model.detect([image]))
        result[f"detections_{size}"] = count
        result["params"] = int(model.keras_model.count_params())
        result["rpn_channels"] = int(config.RPN_CONV_CHANNELS)
        result["compute_dtype"] = config.COMPUTE_DTYPE
        del model

    class Squares(Dataset):
        def load_image(self, image_id):
            return np.random.RandomState(image_id).randint(0, 255, (512, 512, 3)).astype(np.uint8)

        def load_mask(self, image_id):
            masks = np.zeros((512, 512, 20), bool)
            for i in range(20):
                y, x = 20 + (i // 5) * 110, 20 + (i % 5) * 95
                masks[y:y + 40, x:x + 50, i] = True
            return masks, np.ones(20, np.int32)

    ds = Squares()
    ds.add_class("bench", 1, "square")
    ds.add_image("bench", image_id=0, path=None)
    ds.prepare()
    config = BenchConfig()
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", config, "/tmp/bench_logs")
    (batch,) = DataGenerator(ds, config, shuffle=False, steps=1, seed=0)[0]
    from mrcnn.modeling.factory import backbone_norm
    from mrcnn.training import make_optimizer, set_trainable
    set_trainable(model.keras_model, ".*", backbone_norm(config) == "batch", config.TRAIN_HEAD_BN)
    model.keras_model.compile(optimizer=make_optimizer(config, 1e-3), jit_compile=False)
    result["train_step_512_s"] = _median_time(lambda: model.keras_model.train_on_batch(batch))
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", default="resnet18,resnet50,resnet101,mobilenet,"
                                                "mobilenet_v2,densenet121")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--rpn-channels", type=int, default=0,
                        help="RPN_CONV_CHANNELS (default: the Config's 256; Matterport's is 512)")
    parser.add_argument("--compute-dtype", default="",
                        help="COMPUTE_DTYPE: float32 / bfloat16 / auto (default: the Config's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, sizes, args.rpn_channels,
                                             args.compute_dtype)))
        return
    rows = []
    for backbone in args.backbones.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", backbone, "--sizes", args.sizes,
                               "--rpn-channels", str(args.rpn_channels),
                               "--compute-dtype", args.compute_dtype],
                              capture_output=True, text=True, env=dict(
                                  os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{backbone}: failed\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[0][7:]))
        print(json.dumps(rows[-1]))
    header = ["backbone", "params (M)"] + [f"detect {s}² (s) (detections)" for s in sizes] + \
        ["train step 512² (s)", "peak RSS (GB)"]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        cells = [r["backbone"], f"{r['params'] / 1e6:.1f}"] + \
            [f"{r[f'detect_{s}_s']:.2f} ({r[f'detections_{s}']})" for s in sizes] + \
            [f"{r['train_step_512_s']:.2f}", f"{r['peak_rss_gb']:.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
