"""Synthetic nuclei: the embedded default data for the quick start and the tests.

Images look like the three DSB2018 kinds: fluorescence (bright nuclei on dark), brightfield
(dark nuclei on light) and H&E-like colour. Nuclei are ellipses of varied size and
orientation, some in touching pairs, with noise and blur. Masks never overlap.
"""

import os

import numpy as np

from mrcnn.data.dataset import Dataset


def _blur(image, sigma):
    import cv2
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def make_nuclei_image(rng, size=128, num_nuclei=None, kind=None, min_radius=4, max_radius=12):
    """One synthetic image and its instance masks.

    Args:
        rng: numpy RandomState.
        size: side in pixels (int) or (H, W).
        num_nuclei: number of nuclei to place (random 3..12 by default; touching or
            overlapping ones may be dropped, so masks can have fewer).
        kind: "fluorescence", "brightfield" or "histology" (random by default).

    Returns:
        image [H, W, 3] uint8, masks [H, W, N] bool (N >= 0), kind.
    """
    h, w = (size, size) if np.isscalar(size) else size
    kind = kind or rng.choice(["fluorescence", "fluorescence", "brightfield", "histology"])
    count = int(rng.randint(3, 13)) if num_nuclei is None else int(num_nuclei)
    yy, xx = np.mgrid[0:h, 0:w]
    taken = np.zeros((h, w), dtype=bool)
    masks = []
    centres = []
    for i in range(count):
        ry = rng.uniform(min_radius, max_radius)
        rx = ry * rng.uniform(0.6, 1.0)
        if centres and rng.rand() < 0.3:   # a touching neighbour
            cy, cx, r = centres[rng.randint(len(centres))]
            angle = rng.uniform(0, 2 * np.pi)
            cy, cx = cy + (r + ry) * 0.9 * np.sin(angle), cx + (r + ry) * 0.9 * np.cos(angle)
        else:
            cy, cx = rng.uniform(ry, h - ry), rng.uniform(ry, w - ry)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(theta) + dx * np.sin(theta)
        v = -dy * np.sin(theta) + dx * np.cos(theta)
        blob = (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
        blob &= ~taken
        if blob.sum() < 12:
            continue
        taken |= blob
        masks.append(blob)
        centres.append((cy, cx, ry))
    masks = np.stack(masks, axis=-1) if masks else np.zeros((h, w, 0), dtype=bool)

    intensity = np.zeros((h, w), dtype=np.float32)
    for i in range(masks.shape[-1]):
        intensity[masks[:, :, i]] = rng.uniform(0.55, 1.0)
    texture = rng.normal(0, 0.08, (h, w)).astype(np.float32)
    signal = _blur(intensity, rng.uniform(0.6, 1.5)) + texture * (intensity > 0)
    noise = rng.normal(0, rng.uniform(0.02, 0.08), (h, w)).astype(np.float32)
    if kind == "fluorescence":
        gray = 0.05 + 0.8 * signal + noise
        image = np.repeat(gray[..., None], 3, axis=-1)
    elif kind == "brightfield":
        gray = 0.85 - 0.55 * signal + noise
        image = np.repeat(gray[..., None], 3, axis=-1)
    else:
        background = np.array([0.92, 0.75, 0.85], dtype=np.float32)
        nucleus = np.array([0.35, 0.2, 0.55], dtype=np.float32)
        image = background + (nucleus - background) * np.clip(signal, 0, 1)[..., None]
        image += noise[..., None]
    image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image, masks, str(kind)


class SyntheticNucleiDataset(Dataset):
    """In-memory synthetic nuclei; image i is generated from ``seed + i`` on each load."""

    def load_synthetic(self, count, size=128, seed=0, **kwargs):
        """Register ``count`` images of side ``size``; ``kwargs`` go to make_nuclei_image."""
        self.add_class("nucleus", 1, "nucleus")
        for i in range(count):
            self.add_image("nucleus", image_id=f"synthetic_{seed + i:05d}", path=None,
                           seed=seed + i, size=size, options=kwargs)
        return self

    def _make(self, image_id):
        info = self.image_info[image_id]
        return make_nuclei_image(np.random.RandomState(info["seed"]), info["size"],
                                 **info["options"])

    def load_image(self, image_id):
        return self._make(image_id)[0]

    def load_mask(self, image_id):
        masks = self._make(image_id)[1]
        return masks, np.ones([masks.shape[-1]], dtype=np.int32)

    def image_reference(self, image_id):
        return self.image_info[image_id]["id"]


def write_synthetic_dsb(root, count, size=128, seed=0, subset="stage1_train", **kwargs):
    """Write ``count`` synthetic images in the DSB2018 layout under ``root/subset``:
    ``<id>/images/<id>.png`` and ``<id>/masks/<k>.png``. Returns the subset folder."""
    import skimage.io
    folder = os.path.join(root, subset)
    for i in range(count):
        image, masks, kind = make_nuclei_image(np.random.RandomState(seed + i), size, **kwargs)
        image_id = f"synthetic_{kind[:2]}_{seed + i:05d}"
        os.makedirs(os.path.join(folder, image_id, "images"), exist_ok=True)
        os.makedirs(os.path.join(folder, image_id, "masks"), exist_ok=True)
        skimage.io.imsave(os.path.join(folder, image_id, "images", image_id + ".png"), image,
                          check_contrast=False)
        for k in range(masks.shape[-1]):
            skimage.io.imsave(os.path.join(folder, image_id, "masks", f"{k:03d}.png"),
                              (masks[:, :, k] * 255).astype(np.uint8), check_contrast=False)
    return folder
