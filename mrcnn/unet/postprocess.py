"""Instances from U-Net probability maps.

* ``threshold``: foreground > 0.5, connected components (the seed's method).
* ``watershed`` (default with a boundary channel): markers are the foreground minus the
  boundary channel; a watershed on the distance transform grows them back to the foreground, so
  touching nuclei separate. Without a boundary channel, markers come from the peaks of the
  distance transform.
"""

import numpy as np
import scipy.ndimage as ndi


def _masks_from_labels(labels, min_size):
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[counts >= min_size]
    masks = labels[..., None] == ids.reshape(1, 1, -1)
    return masks


def instances_from_probabilities(prob, method="watershed", threshold=0.5, min_size=10):
    """prob [H, W, C] (C = 1 foreground, or 2 foreground + boundary) -> (masks [H, W, N] bool,
    scores [N] = mean foreground probability of each instance)."""
    from skimage.segmentation import watershed
    fg = prob[..., 0] > threshold
    if method == "threshold":
        labels, _ = ndi.label(fg)
    elif method == "watershed":
        distance = ndi.distance_transform_edt(fg)
        if prob.shape[-1] > 1:
            markers, _ = ndi.label(fg & (prob[..., 1] < threshold))
        else:
            from skimage.feature import peak_local_max
            peaks = peak_local_max(distance, min_distance=4, labels=ndi.label(fg)[0],
                                   exclude_border=False)
            markers = np.zeros(fg.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=fg)
        # foreground blobs that got no marker still count as one nucleus each
        orphans, count = ndi.label(fg & (labels == 0))
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    else:
        raise ValueError(f"unknown instance method {method!r}; use 'watershed' or 'threshold'")
    masks = _masks_from_labels(labels, min_size)
    scores = np.array([prob[..., 0][masks[..., k]].mean() for k in range(masks.shape[-1])])
    return masks, scores


def boundary_target(masks, width=2):
    """[H, W] float boundary channel: pixels of an instance within ``width`` of another
    instance or of its own rim (what the second U-Net output learns)."""
    if masks.shape[-1] == 0:
        return np.zeros(masks.shape[:2], np.float32)
    out = np.zeros(masks.shape[:2], bool)
    for k in range(masks.shape[-1]):
        m = masks[..., k]
        out |= m & ~ndi.binary_erosion(m, iterations=width)
    return out.astype(np.float32)
