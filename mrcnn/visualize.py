"""Drawing detections (matplotlib is imported only when a function is called)."""

import colorsys

import numpy as np


def random_colors(n, seed=0):
    """n visually distinct RGB colours in [0, 1]."""
    hsv = [(i / max(n, 1), 1.0, 1.0) for i in range(n)]
    colors = [colorsys.hsv_to_rgb(*c) for c in hsv]
    np.random.RandomState(seed).shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blend a colour into image [H, W, 3] where mask [H, W] is True (returns a copy)."""
    out = image.astype(np.float32).copy()
    for c in range(3):
        out[:, :, c] = np.where(mask, out[:, :, c] * (1 - alpha) + alpha * color[c] * 255,
                                out[:, :, c])
    return out.astype(np.uint8)


def overlay_instances(image, masks, colors=None, alpha=0.5):
    """Image [H, W, 3] with every instance mask [H, W, N] tinted -> uint8 [H, W, 3]."""
    colors = colors or random_colors(masks.shape[-1])
    out = np.asarray(image)[..., :3].astype(np.uint8)
    for i in range(masks.shape[-1]):
        out = apply_mask(out, masks[:, :, i], colors[i], alpha)
    return out


def overlay_labels(image, labels, alpha=0.5):
    """Image [H, W, 3] with every object of a label image [H, W] (0 = background) tinted ->
    uint8 [H, W, 3]; the same picture as :func:`overlay_instances` of the label masks 1..K
    (label k gets colour k - 1 of ``random_colors(K)``), in one pass however many objects."""
    labels = np.asarray(labels)
    count = int(labels.max()) if labels.size else 0
    out = np.asarray(image)[..., :3].astype(np.uint8)
    if count == 0:
        return out.copy()
    table = np.zeros((count + 1, 3), np.float32)
    table[1:] = np.array(random_colors(count), np.float32) * 255
    tinted = out.astype(np.float32) * (1 - alpha) + alpha * table[labels]
    return np.where((labels > 0)[..., None], tinted, out).astype(np.uint8)


def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_bbox=True, show_mask=True):
    """Matterport's display_instances: boxes (pixels), masks [H, W, N], labels, scores."""
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    n = boxes.shape[0]
    own = ax is None
    if own:
        _, ax = plt.subplots(1, figsize=figsize)
    colors = random_colors(n)
    ax.set_title(title)
    ax.axis("off")
    shown = overlay_instances(image, masks, colors) if show_mask and n else np.asarray(image)
    for i in range(n):
        y1, x1, y2, x2 = boxes[i]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=1,
                                           edgecolor=colors[i], facecolor="none", alpha=0.7))
        label = class_names[class_ids[i]]
        text = f"{label} {scores[i]:.2f}" if scores is not None else label
        ax.text(x1, y1 + 8, text, color="w", size=9, backgroundcolor="none")
    ax.imshow(shown.astype(np.uint8))
    if own:
        plt.show()
    return ax
