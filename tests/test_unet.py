"""U-Net baseline: architecture, boundary targets, instance separation, training, saving."""

import numpy as np
import pytest

from mrcnn.data.synthetic import SyntheticNucleiDataset
from mrcnn.unet import (UNetPredictor, UNetSequence, boundary_target, build_unet,
                        instances_from_probabilities, train_unet)


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_seed_architecture():
    model = build_unet(256, outputs=1)
    assert model.output_shape == (None, 256, 256, 1)
    convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    widths = [c.filters for c in convs]
    # 4 down levels x 2 convs, centre x 2, 4 up levels x 2, 1x1 output
    assert widths == [8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 64, 64, 32, 32, 16, 16, 8, 8, 1]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1])
    assert build_unet(None, outputs=2).predict_on_batch(np.zeros((1, 48, 64, 3))).shape == \
        (1, 48, 64, 2)


def test_watershed_splits_touching_nuclei_threshold_does_not():
    shape = (40, 60)
    a, b = disc(shape, 20, 20, 10), disc(shape, 20, 38, 10)   # overlapping discs
    masks = np.stack([a, b & ~a], axis=-1)
    prob = np.stack([masks.any(-1).astype(np.float32), boundary_target(masks)], axis=-1)
    split, scores = instances_from_probabilities(prob, "watershed")
    merged, _ = instances_from_probabilities(prob[..., :1], "threshold")
    assert split.shape[-1] == 2 and merged.shape[-1] == 1
    assert np.all(scores > 0.9)
    # each split instance overlaps mostly one of the true discs
    for k in range(2):
        iou = [(split[..., k] & m).sum() / (split[..., k] | m).sum() for m in masks.transpose(2, 0, 1)]
        assert max(iou) > 0.8


def test_unet_sequence_targets():
    ds = SyntheticNucleiDataset().load_synthetic(3, size=64, seed=0)
    ds.prepare()
    x, y = UNetSequence(ds, batch_size=2, crop=64, outputs=2, steps=1)[0]
    assert x.shape == (2, 64, 64, 3) and y.shape == (2, 64, 64, 2)
    assert 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) <= {0.0, 1.0} and (y[..., 1] <= y[..., 0]).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["boundary", "seed"])
def test_unet_learns_saves_and_predicts(tmp_path, variant):
    ds = SyntheticNucleiDataset().load_synthetic(6, size=64, seed=1)
    ds.prepare()
    import keras
    from mrcnn.unet import train as unet_train
    model, history = train_unet(ds, None, str(tmp_path), variant=variant, epochs=12,
                                steps_per_epoch=6, batch_size=4, seed=0, verbose=0,
                                learning_rate=3e-3)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    predictor = UNetPredictor(str(tmp_path / unet_train.MODEL_FILE))
    assert isinstance(predictor.model, keras.Model)
    image = ds.load_image(0)[:50, :63]          # odd size: output stays at original size
    out = predictor(image)
    assert out["masks"].shape[:2] == (50, 63) and len(out["scores"]) == out["masks"].shape[-1]
    with pytest.raises(FileNotFoundError):
        UNetPredictor(str(tmp_path / "missing.keras"))
