"""benchmarks/profile_step.py: a training step's op time split by part of the model, from a
real TensorFlow profile of the tiny model."""

import numpy as np

from mrcnn import model as modellib
from mrcnn import training as training_lib
from mrcnn.data.generator import DataGenerator
from tests.conftest import TinyConfig, load_benchmark


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
    profile.profile_training_steps(keras_model, batches[1:], str(tmp_path / "profile"))
    events = profile.op_events(profile.load_xspace(str(tmp_path / "profile")))
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
