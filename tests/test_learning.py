"""The whole pipeline learns: a short training on a few synthetic nuclei images makes detect()
find most of their nuclei with mask IoU > 0.5."""

import keras
import pytest

from mrcnn import model as modellib
from mrcnn.data.synthetic import SyntheticNucleiDataset
from mrcnn.metrics import mask_recall
from tests.conftest import TinyConfig


class LearnConfig(TinyConfig):
    STEPS_PER_EPOCH = 10
    # GroupNorm, what the nucleus model trains from scratch with. TinyConfig's trainable
    # BatchNorm ("batch") normalises each 2-image training batch by its own statistics but
    # inference by the running ones; with batches this small they disagree (a failing run's
    # first BatchNorm had moving variance at 0.6x the images' own), and 2 of 10 seeds found
    # 24 and 40 of 56 nuclei, the classifier calling well-placed proposals (IoU 0.8)
    # background; re-estimating the statistics on the 8 images brought one back to 51. With
    # GroupNorm 10 of 10 seeds found 55 of 56 (2 test workers' thread setting, Intel Xeon).
    BACKBONE_NORM = "group"
    LEARNING_RATE_WARMUP_STEPS = 50


class LearnInferenceConfig(LearnConfig):
    IMAGES_PER_GPU = 1


@pytest.mark.slow
def test_short_training_finds_most_nuclei(tmp_path):
    # Training from scratch for a minute varies with the initialisation; a fixed seed keeps
    # the test about the pipeline, not about luck.
    keras.utils.set_random_seed(int(__import__("os").environ.get("LEARN_SEED", "1")))
    dataset = SyntheticNucleiDataset().load_synthetic(8, size=128, seed=11)
    dataset.prepare()
    model = modellib.MaskRCNN("training", LearnConfig(), str(tmp_path))
    # the CLI's recipe: lr 0.01 after a 50-step warm-up, then a quarter of the steps at lr/10.
    # At a constant lr 0.02 after 10 warm-up steps, 2 of 5 seeds found under half the nuclei
    # (1 and 28 of 56; TensorFlow's CPU kernels are not bit-reproducible, so a seed does not
    # fix the outcome). With this recipe and TinyConfig's BatchNorm seeds 1-10 found 24-55 of
    # 56; with GroupNorm (LearnConfig) all found 55.
    first = model.train(dataset, None, 0.01, 45, "all", verbose=0).history
    last = model.train(dataset, None, 0.001, 60, "all", verbose=0).history
    assert last["loss"][-1] < first["loss"][0] / 4
    assert last["mrcnn_mask_loss"][-1] < 0.5 * first["mrcnn_mask_loss"][0]

    infer = modellib.MaskRCNN("inference", LearnInferenceConfig(), str(tmp_path))
    infer.load_weights(infer.find_last())
    results = infer.detect([dataset.load_image(i) for i in dataset.image_ids])
    found = total = 0
    for image_id, result in zip(dataset.image_ids, results):
        f, t, _ = mask_recall(dataset.load_mask(image_id)[0], result["masks"])
        found, total = found + f, total + t
    assert total > 30
    assert found / total > 0.85, f"found {found} of {total} nuclei"


class MobileNetGroupConfig(LearnConfig):
    BACKBONE = "mobilenet_v2"
    STEPS_PER_EPOCH = 10
    # deep backbones from scratch need the gentler start the nucleus CLI uses (lr 0.01 and a
    # long warm-up); at lr 0.02 after 10 warm-up steps their RPN did not learn
    LEARNING_RATE_WARMUP_STEPS = 100


@pytest.mark.slow
def test_keras_applications_backbone_learns_from_scratch_with_groupnorm(tmp_path):
    """A non-ResNet backbone (keras.applications' MobileNetV2) with its BatchNorm swapped for
    GroupNorm trains from scratch: the loss falls and detect() finds nuclei."""
    keras.utils.set_random_seed(0)
    dataset = SyntheticNucleiDataset().load_synthetic(8, size=128, seed=11)
    dataset.prepare()
    model = modellib.MaskRCNN("training", MobileNetGroupConfig(), str(tmp_path))
    backbone_bn = [layer.name for layer in model.keras_model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)
                   and not layer.name.startswith("mrcnn_")]   # the heads keep theirs
    assert not backbone_bn
    history = model.train(dataset, None, 0.01, 25, "all", verbose=0).history
    assert history["loss"][-1] < history["loss"][0] / 4
    assert history["mrcnn_mask_loss"][-1] < 0.7 * history["mrcnn_mask_loss"][0]

    class Inference(MobileNetGroupConfig):
        IMAGES_PER_GPU = 1
    infer = modellib.MaskRCNN("inference", Inference(), str(tmp_path))
    infer.load_weights(infer.find_last())
    found = total = 0
    for image_id in dataset.image_ids:
        result = infer.detect([dataset.load_image(image_id)])[0]
        f, t, _ = mask_recall(dataset.load_mask(image_id)[0], result["masks"])
        found, total = found + f, total + t
    assert found / total > 0.5, f"found {found} of {total} nuclei"
