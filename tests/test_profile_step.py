"""benchmarks/profile_step.py: a training step's op time split by part of the model, from a
real TensorFlow profile of the tiny model."""

import numpy as np

from mrcnn import model as modellib
from mrcnn import training as training_lib
from mrcnn.data.generator import DataGenerator
from tests.conftest import TinyConfig, TinyInferenceConfig, load_benchmark, random_image


def test_training_step_op_time_is_split_by_part_of_the_model(tmp_path, synthetic_dataset):
    profile = load_benchmark("profile_step")
    config = TinyConfig()
    model = modellib.MaskRCNN("training", config, str(tmp_path / "logs"))
    keras_model = model.keras_model
    parts = profile.layer_parts(keras_model)

    # The backbone is exactly the tiny backbone's layers (found from the graph, by no name);
    # every other layer with weights belongs to a named part.
    backbone = {name for name, part in parts.items() if part == "backbone"}
    assert {n for n in backbone if n.endswith("conv2")} == {f"tiny{i}_conv2" for i in range(2, 6)}
    assert all(name.startswith("tiny") for name in backbone)
    for layer in keras_model.layers:
        if layer.weights:
            assert parts[layer.name] not in ("other layers",), layer.name
    assert parts["fpn_p2"] == "FPN" and parts["fpn_c5p5"] == "FPN"
    assert parts["mrcnn_mask_conv1"] == "mask head" and parts["mrcnn_class_conv1"] == "box head"
    assert parts["ROI"] == "proposals" and parts["proposal_targets"] == "detection targets"
    assert profile.scope_part("gradient_tape/mask_rcnn_1/fpn_p2_1/convolution", parts) == "FPN"
    assert profile.scope_part("adam_w/ResourceApplyAdam", parts) == "optimizer"
    assert profile.scope_part("gradient_tape/Mul", parts) == profile.LOSSES

    training_lib.set_trainable(keras_model, ".*", True)
    keras_model.compile(optimizer=training_lib.make_optimizer(config, 1e-3), jit_compile=False)
    generator = DataGenerator(synthetic_dataset, config, seed=0, steps=3)
    batches = [generator[i][0] for i in range(3)]
    keras_model.train_on_batch(batches[0])          # traced outside the profile
    events = profile.profiled_op_events(
        lambda: [keras_model.train_on_batch(batch) for batch in batches[1:]])
    assert events and all(ms >= 0 for _, _, ms in events)
    summary = profile.summarise(events, parts, steps=2)
    total = sum(ms for _, _, ms in events) / 2
    for key in ("parts", "op_types", "layers"):
        assert np.isclose(sum(summary[key].values()), total)
    for part in ("backbone", "FPN", "RPN head", "mask head", "box head", "optimizer"):
        assert summary["parts"][part] > 0, part
    assert not set(summary["parts"]) - {"backbone", "FPN", "RPN head", "proposals",
                                        "detection targets", "mask head", "box head",
                                        "optimizer", profile.LOSSES, "other layers"}
    # the convolutions' kernels (forward and both gradients) are among the op types
    assert any("Conv2D" in op_type for op_type in summary["op_types"])


class _OneImageZeroConfidence(TinyInferenceConfig):
    DETECTION_MIN_CONFIDENCE = 0.0       # every slot detected, so the mask head runs


def test_detect_op_time_is_split_by_part_of_the_model(tmp_path):
    """benchmarks/bench_detect_parts.py --ops: the inference graph's profile, same parts."""
    bench = load_benchmark("bench_detect_parts")
    model = modellib.MaskRCNN("inference", _OneImageZeroConfidence(), str(tmp_path))
    rng = np.random.RandomState(0)
    images = [random_image(rng, 128, 128), random_image(rng, 96, 128)]
    summary = bench.profile_ops(model, images)
    per_image = {key: sum(summary[key].values()) for key in ("parts", "op_types", "layers")}
    assert per_image["parts"] > 0
    assert np.isclose(per_image["parts"], per_image["op_types"])
    assert np.isclose(per_image["parts"], per_image["layers"])
    for part in ("backbone", "FPN", "RPN head", "proposals", "box head", "mask head",
                 "detections"):
        assert summary["parts"][part] > 0, part
    # inference has no targets, losses or optimizer
    assert not set(summary["parts"]) & {"detection targets", "optimizer",
                                        "losses and gradient sums"}
    assert summary["layers"]["fpn_p2"] > 0 and summary["layers"]["rpn_class"] > 0
