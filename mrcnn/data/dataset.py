"""Matterport's Dataset API: add_class, add_image, prepare, load_image, load_mask."""

import logging
import os

import numpy as np
import skimage.io

from mrcnn.ops.image import to_rgb_uint8

log = logging.getLogger(__name__)


class Dataset:
    """Base class for datasets. Subclass it and implement ``load_mask`` (and usually
    ``load_image``)::

        class ShapesDataset(Dataset):
            def load_shapes(self, count):
                self.add_class("shapes", 1, "square")
                for i in range(count):
                    self.add_image("shapes", image_id=i, path=None, size=64)

            def load_mask(self, image_id):
                return masks_bool_HxWxN, class_ids_int32_N

    Image ids used by the model are the internal indices 0..num_images-1 (``image_ids``);
    ``image_info[i]["id"]`` keeps the source's own id.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}
        self._object_sizes = {}

    def add_class(self, source, class_id, class_name):
        """Register a class of a source; re-adding the same (source, id) is ignored."""
        assert "." not in source, "Source name cannot contain a dot"
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        """Register an image; extra keyword arguments are kept in ``image_info``."""
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id):
        """A string that identifies the image for humans (its path by default)."""
        return str(self.image_info[image_id].get("path") or self.image_info[image_id]["id"])

    def prepare(self, class_map=None):
        """Build the internal id tables. Call after adding classes and images."""
        def clean_name(name):
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {f"{info['source']}.{info['id']}": idx
                                      for info, idx in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": idx
                                      for info, idx in zip(self.image_info, self._image_ids)}
        self.sources = sorted({i["source"] for i in self.class_info})
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info)
                if i == 0 or source == info["source"]]
        return self

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        """Internal class id -> the source's own class id."""
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def repeat_factors(self):
        """[num_images] float: how often each image is drawn relative to the others,
        ``image_info[i]["repeat_factor"]`` (default 1; see DataGenerator and the U-Net)."""
        return np.array([float(info.get("repeat_factor", 1.0)) for info in self.image_info])

    def source_image_link(self, image_id):
        """The image's path or URL."""
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """Load an image as [H, W, 3] uint8 (grayscale, RGBA and 16-bit are converted).

        Raises:
            ValueError: the file is missing, corrupt or not an image (the message names it).
        """
        path = self.image_info[image_id]["path"]
        return to_rgb_uint8(read_image_file(path))

    def load_mask(self, image_id):
        """Instance masks [H, W, N] bool and class ids [N] int32. Override this.

        The base class returns no instances (the image trains as a negative).
        """
        log.warning("Dataset.load_mask is not overridden; %s has no instances.",
                    self.image_reference(image_id))
        return np.zeros([0, 0, 0], dtype=bool), np.zeros([0], dtype=np.int32)

    def load_mask_window(self, image_id, y, x, height, width):
        """Optional fast path of the ``crop`` resize mode: the masks of one window only.

        Override it when masks can be cut before they are expanded (from a label image, say):
        return (masks [h, w, N] bool, class ids [N] int32) for the pixels
        ``[y:y + height, x:x + width]``, clipped to the image (h <= height, w <= width).
        Instances outside the window may be returned as empty masks; they are dropped. The
        default returns None, and the crop is cut from :meth:`load_mask`'s full masks.
        """
        return None

    def object_size(self, image_id):
        """The median equivalent diameter (sqrt(4 area / pi)) of the image's instances, in
        original-image pixels, or None when it has none. Computed from :meth:`load_mask` once
        per image and remembered; ``OBJECT_SIZE_TARGET`` scales training crops by it."""
        if image_id not in self._object_sizes:
            mask, _ = self.load_mask(image_id)
            mask = np.asarray(mask)
            areas = mask.sum(axis=(0, 1)) if mask.ndim == 3 else np.zeros([0])
            self._object_sizes[image_id] = median_diameter(areas)
        return self._object_sizes[image_id]


def median_diameter(areas):
    """The median equivalent diameter sqrt(4 a / pi) of the non-zero ``areas`` (pixels), or
    None when there are none."""
    areas = np.asarray(areas)
    areas = areas[areas > 0]
    return float(np.sqrt(4.0 * np.median(areas) / np.pi)) if len(areas) else None


class BadImageSkipper:
    """Load training examples so that one unreadable image in a large dataset is logged once
    (``skipping image <path>: <reason>``), remembered and replaced by the next candidate, not
    the end of an hours-long run. Shared by the Mask R-CNN and U-Net data pipelines.

    Args:
        dataset: the Dataset (its ``image_reference`` names the image in the log).
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.bad = set()

    def load(self, candidates, load_fn):
        """``load_fn(image_id)`` for the first candidate id that loads.

        Raises:
            ValueError: no candidate could be loaded.
        """
        for image_id in candidates:
            image_id = int(image_id)
            if image_id in self.bad:
                continue
            try:
                return load_fn(image_id)
            except ValueError as err:
                self.bad.add(image_id)
                log.warning("skipping image %s: %s", self.dataset.image_reference(image_id), err)
        raise ValueError("no image of the dataset could be loaded; see the warnings above.")

    def skipped(self):
        """References (paths) of the images skipped so far, sorted."""
        return sorted(self.dataset.image_reference(i) for i in self.bad)


def read_image_file(path):
    """Read an image file with scikit-image; a clear ValueError names a bad file."""
    if not os.path.exists(path):
        raise ValueError(f"image file not found: {path}")
    try:
        image = skimage.io.imread(path)
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err} "
                         "(corrupt or not an image?)") from err
    if image is None or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"{path} is not a 2-D image (array shape "
                         f"{getattr(image, 'shape', None)}).")
    return image
