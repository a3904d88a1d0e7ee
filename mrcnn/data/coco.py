"""A Dataset over any COCO instance-segmentation JSON (polygons and RLE), read with pycocotools.

    dataset = CocoDataset().load_coco("annotations.json", image_dir="images")
    dataset.prepare()

Categories become classes 1..K in the JSON's order (or only ``class_ids``). Crowd annotations
(``iscrowd: 1``) are left out of the instances, as Matterport's training ignores them.
"""

import os

import numpy as np

from mrcnn.data.dataset import Dataset


class CocoDataset(Dataset):
    """Images and instance masks from a COCO-format annotation file."""

    def load_coco(self, annotation_file, image_dir=None, class_ids=None, source="coco"):
        """Register the images and classes of ``annotation_file``.

        Args:
            annotation_file: path of the COCO JSON.
            image_dir: folder the images' ``file_name`` are relative to (default: the JSON's
                folder).
            class_ids: COCO category ids to keep (default all).

        Raises:
            ValueError: missing/unreadable file, no categories or no images.
        """
        from pycocotools.coco import COCO
        if not os.path.isfile(annotation_file):
            raise ValueError(f"COCO annotation file not found: {annotation_file}")
        try:
            import contextlib
            import io
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(annotation_file)
        except Exception as err:
            raise ValueError(f"cannot read COCO annotations {annotation_file}: "
                             f"{type(err).__name__}: {err}") from err
        image_dir = image_dir or os.path.dirname(os.path.abspath(annotation_file))
        category_ids = sorted(class_ids or coco.getCatIds())
        if not category_ids:
            raise ValueError(f"{annotation_file} defines no categories")
        for cat in category_ids:
            self.add_class(source, cat, coco.loadCats(cat)[0]["name"])
        image_ids = sorted(coco.getImgIds())
        if not image_ids:
            raise ValueError(f"{annotation_file} lists no images")
        for image_id in image_ids:
            info = coco.imgs[image_id]
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=category_ids,
                                                       iscrowd=None))
            self.add_image(source, image_id=image_id,
                           path=os.path.join(image_dir, info["file_name"]),
                           width=info.get("width"), height=info.get("height"),
                           annotations=annotations)
        self._coco = coco
        return self

    def load_mask(self, image_id):
        """Masks [H, W, N] bool and class ids [N] int32 from polygons or RLE.

        Raises:
            ValueError: an annotation whose segmentation cannot be decoded.
        """
        info = self.image_info[image_id]
        height, width = info["height"], info["width"]
        if height is None or width is None:
            height, width = self.load_image(image_id).shape[:2]
        masks, class_ids = [], []
        for ann in info["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            try:
                mask = self._ann_to_mask(ann, height, width)
            except Exception as err:
                raise ValueError(f"{info['path']}: annotation {ann.get('id')} cannot be "
                                 f"decoded ({type(err).__name__}: {err})") from err
            if mask.any():
                masks.append(mask)
                class_ids.append(self.map_source_class_id(f"{info['source']}.{ann['category_id']}"))
        if not masks:
            return np.zeros((height, width, 0), bool), np.zeros([0], np.int32)
        return np.stack(masks, axis=-1), np.array(class_ids, dtype=np.int32)

    @staticmethod
    def _ann_to_mask(ann, height, width):
        from pycocotools import mask as mask_utils
        segm = ann["segmentation"]
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        return mask_utils.decode(rle).astype(bool)

    def image_reference(self, image_id):
        return self.image_info[image_id]["path"]
