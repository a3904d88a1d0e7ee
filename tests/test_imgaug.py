"""imgaug augmenters (Matterport code passes them to train(augmentation=...)): masks move with
the image, and Matterport's nucleus recipe trains. imgaug itself comes from the [imgaug] extra
(the maintained fork imaug); the slow test installs that extra into a fresh virtual
environment beside this one and runs the imgaug tests there."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mrcnn import model as modellib
from mrcnn.data.augment import apply_augmentation
from mrcnn.data.synthetic import SyntheticNucleiDataset
from tests.conftest import TinyConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _matterport_nucleus_augmentation(iaa):
    return iaa.SomeOf((0, 2), [
        iaa.Fliplr(0.5), iaa.Flipud(0.5),
        iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180), iaa.Affine(rotate=270)]),
        iaa.Multiply((0.8, 1.5)), iaa.GaussianBlur(sigma=(0.0, 5.0))])


def test_imgaug_flip_moves_image_and_masks_together():
    iaa = pytest.importorskip("imgaug.augmenters")
    image = np.zeros((32, 32, 3), np.uint8)
    image[4:10, 2:8] = 255
    masks = np.zeros((32, 32, 2), bool)
    masks[4:10, 2:8, 0] = True
    masks[20:30, 20:25, 1] = True
    out, out_masks = apply_augmentation(iaa.Fliplr(1.0), image, masks)
    assert out_masks.dtype == bool and out_masks.shape == masks.shape
    np.testing.assert_array_equal(out_masks, masks[:, ::-1])
    np.testing.assert_array_equal(out[..., 0] > 0, out_masks[..., 0])
    # the geometric part of Matterport's recipe keeps them aligned on every draw
    rotate = iaa.SomeOf((0, 2), [iaa.Fliplr(0.5), iaa.Flipud(0.5),
                                 iaa.OneOf([iaa.Affine(rotate=90), iaa.Affine(rotate=180)])],
                        seed=0)
    for _ in range(10):
        out, out_masks = apply_augmentation(rotate, image, masks)
        np.testing.assert_array_equal(out[..., 0] > 127, out_masks[..., 0])


def test_matterport_imgaug_recipe_trains(tmp_path):
    iaa = pytest.importorskip("imgaug.augmenters")
    dataset = SyntheticNucleiDataset().load_synthetic(2, size=128, seed=1)
    dataset.prepare()
    model = modellib.MaskRCNN("training", TinyConfig(), str(tmp_path))
    history = model.train(dataset, None, 1e-3, 1, "all", verbose=0,
                          augmentation=_matterport_nucleus_augmentation(iaa))
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.slow
def test_imgaug_extra_installs_beside_tensorflow(tmp_path):
    """``pip install -e ".[imgaug]"`` as the README says, in a virtual environment that sees
    this one's packages: imgaug imports next to TensorFlow and the imgaug tests pass there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", f"{ROOT}[imgaug]"], check=True,
                   cwd=ROOT)
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             os.path.join(ROOT, "tests", "test_imgaug.py"), "-k",
                             "flip_moves or recipe_trains", "-rs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout and "skipped" not in result.stdout, result.stdout
