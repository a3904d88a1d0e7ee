"""Shared fixtures: tiny configs, a tiny test backbone, synthetic nuclei datasets."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402


def _share_the_cores_between_workers():
    """Under pytest-xdist (``-n N``) give each worker's TensorFlow its share of the cores for
    its kernels, so N workers do not each start one thread per core. Much of a test's time is
    single-threaded Python (building and tracing graphs, subprocesses, pip), which the
    workers then overlap. Must run before TensorFlow executes its first op."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        tf.config.threading.set_intra_op_parallelism_threads(
            max(1, (os.cpu_count() or 1) // workers))


_share_the_cores_between_workers()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import backbones  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.data.synthetic import SyntheticNucleiDataset  # noqa: E402

SHARED_DSB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dsb2018",
                          "stage1_train")


def _tiny_backbone(input_tensor, *, train_bn, weights):
    """A 4-stage conv net with C2..C5 at strides 4..32 (fast enough for CPU tests)."""
    x = input_tensor
    outputs = {}
    for stage, (filters, strides) in enumerate([(16, 4), (24, 2), (32, 2), (48, 2)], start=2):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", name=f"tiny{stage}_conv")(x)
        x = layers.BatchNormalization(name=f"tiny{stage}_bn")(x)
        x = layers.Activation("relu", name=f"tiny{stage}_out")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          name=f"tiny{stage}_conv2")(x)
        outputs[f"C{stage}"] = x
    return keras.Model(keras.utils.get_source_inputs(input_tensor), outputs, name="tiny")


if "tiny_test" not in backbones.list_backbones():
    backbones.register_backbone(
        "tiny_test", taps={f"C{i}": f"tiny{i}_conv2" for i in range(2, 6)},
        channels=(16, 24, 32, 48),
        stage_regex={"3+": r"tiny[345]_.*", "4+": r"tiny[45]_.*", "5+": r"tiny5_.*"},
    )(_tiny_backbone)


class TinyConfig(Config):
    """64-128 px images, few ROIs, small heads."""

    NAME = "tiny"
    NUM_CLASSES = 2
    BACKBONE = "tiny_test"
    IMAGES_PER_GPU = 2
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 20
    DETECTION_MAX_INSTANCES = 30
    DETECTION_MIN_CONFIDENCE = 0.5
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 2
    TRAIN_BN = True
    WEIGHT_DECAY = 1e-4
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_CONV_CHANNELS = 64
    TOP_DOWN_PYRAMID_SIZE = 64
    MASK_HEAD_CHANNELS = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    PRE_NMS_LIMIT = 600
    POST_NMS_ROIS_TRAINING = 200
    POST_NMS_ROIS_INFERENCE = 200
    TRAIN_ROIS_PER_IMAGE = 64
    VALIDATION_STEPS = 1


def small_cli_sets(**changes):
    """``--set KEY=VALUE`` arguments giving the nucleus CLI TinyConfig's small model (128 px,
    few ROIs, narrow heads), with ``changes`` on top (None drops a field)."""
    fields = {k: getattr(TinyConfig, k) for k in (
        "IMAGE_MIN_DIM", "IMAGE_MAX_DIM", "RPN_CONV_CHANNELS", "TOP_DOWN_PYRAMID_SIZE",
        "MASK_HEAD_CHANNELS", "FPN_CLASSIF_FC_LAYERS_SIZE", "PRE_NMS_LIMIT",
        "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE", "TRAIN_ROIS_PER_IMAGE",
        "VALIDATION_STEPS")}
    fields.update(IMAGE_MIN_SCALE=1, IMAGES_PER_GPU=1, MAX_GT_INSTANCES=40,
                  DETECTION_MAX_INSTANCES=50, EVAL_EVERY_N_EPOCHS=0)
    fields.update(changes)
    out = []
    for key, value in fields.items():
        if value is not None:
            out += ["--set", f"{key}={value}"]
    return out


def load_benchmark(name):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyInferenceConfig(TinyConfig):
    IMAGES_PER_GPU = 1


@pytest.fixture
def tiny_config():
    return TinyConfig()


@pytest.fixture
def tiny_inference_config():
    return TinyInferenceConfig()


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A model folder holding one checkpoint of TinyConfig trained 1 epoch on 2 images."""
    from mrcnn import model as modellib
    ds = SyntheticNucleiDataset().load_synthetic(2, size=128, seed=5)
    ds.prepare()
    folder = tmp_path_factory.mktemp("logs")
    # Seeded: an unseeded 1-epoch model sometimes scored every ROI as background, and the
    # detect tests then saw no detections (a flake seen once in CI).
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("training", TinyConfig(), str(folder))
    model.train(ds, None, 1e-3, 1, "all", seed=0, verbose=0)
    return str(folder)


class ZeroConfidenceConfig(TinyConfig):
    """Every detection slot up to DETECTION_MAX_INSTANCES is kept, whatever its score."""

    IMAGES_PER_GPU = 2
    DETECTION_MIN_CONFIDENCE = 0.0


@pytest.fixture
def synthetic_dataset():
    ds = SyntheticNucleiDataset().load_synthetic(6, size=128, seed=3)
    ds.prepare()
    return ds


def random_image(rng, h, w):
    return rng.randint(0, 255, (h, w, 3)).astype(np.uint8)


def assert_detects_and_round_trips(config, folder):
    """A randomly initialised inference model of ``config`` detects on a random 128 px image,
    and its whole model saved as ``.keras`` and loaded in safe mode detects the same."""
    from mrcnn import model as modellib
    keras.utils.set_random_seed(0)
    model = modellib.MaskRCNN("inference", config, str(folder))
    image = np.random.RandomState(4).randint(0, 255, (128, 128, 3)).astype(np.uint8)
    expected = model.detect([image])
    assert expected[0]["masks"].shape[:2] == (128, 128) and len(expected[0]["scores"])
    path = model.save(str(folder / "model.keras"))
    again = modellib.MaskRCNN.from_keras_file(path, config).detect([image])
    for key in ("rois", "class_ids", "scores", "masks"):
        np.testing.assert_array_equal(again[0][key], expected[0][key])
