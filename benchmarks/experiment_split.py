"""A held-out-by-experiment split of DSB2018's stage1_train: a proxy for images the model has
never seen.

The nucleus sample's ``val`` split takes every 10th image of each kind, so almost every val
image has siblings from the same experiment (same microscope, stain, magnification and cell
line) in ``train``. Images from other labs look different, and a change that only helps
there (augmentation, for instance) cannot show on such a split. This script groups the images
into likely experiments and holds whole experiments out:

1. an experiment is a set of images of the same kind (fluorescence / histology / brightfield,
   ``samples.nucleus.nucleus.image_kind``) and the same size in pixels, further split by
   k-means (about 20 images per cluster) on the log mean grey level and the log median
   nucleus area when the size group is large;
2. per kind, experiments are taken in a fixed pseudo-random order (a hash of their key) until
   at least ``--fraction`` of the kind's images are held out, skipping any experiment that
   would hold out more than twice that share.

It writes two folders of symbolic links to the image folders (nothing is copied),
``<out>/experiment_train`` and ``<out>/experiment_test``, and ``<out>/experiments.json``
(every image's kind, size, features and experiment). Train and evaluate on them with the
README's commands and ``--dataset <out> --subset experiment_train`` /
``--subset experiment_test``:

    python benchmarks/experiment_split.py --dataset ../shared/data/dsb2018 --out runs/xsplit
    python samples/nucleus/train.py train --dataset runs/xsplit --subset experiment_train ...
    python samples/nucleus/train.py evaluate --dataset runs/xsplit --subset experiment_test ...
"""

import argparse
import hashlib
import json
import os

import numpy as np

from samples.nucleus.nucleus import NucleusDataset, image_kind

IMAGES_PER_CLUSTER = 20


def read_features(dataset_dir, subset):
    """{image id: (kind, (height, width), log mean grey level, log median nucleus area)} and
    {image id: its ``<id>`` folder}, for every image of ``<dataset_dir>/<subset>``, read
    through :class:`NucleusDataset` (so a missing or empty ``masks/`` folder, a corrupt file
    or a mask of another size than its image is a ValueError naming it).
    """
    dataset = NucleusDataset(cache_masks=False)
    dataset.load_nucleus(dataset_dir, subset, unlabelled="error")
    dataset.prepare()
    features, folders = {}, {}
    for index in dataset.image_ids:
        info = dataset.image_info[index]
        rgb = dataset.load_image(index)
        masks, _ = dataset.load_mask(index)
        area = float(np.median(masks.sum(axis=(0, 1))))
        features[info["id"]] = (image_kind(rgb), tuple(int(s) for s in rgb.shape[:2]),
                                float(np.log1p(rgb.mean())), float(np.log(max(area, 1.0))))
        folders[info["id"]] = os.path.dirname(os.path.dirname(info["path"]))
    return features, folders


def kmeans(points, k, iterations=50):
    """Deterministic k-means: centres start at evenly spaced points of the array sorted by its
    first column. Returns the cluster index of each point, [N] int."""
    order = np.argsort(points[:, 0], kind="stable")
    centres = points[order[np.linspace(0, len(points) - 1, k).round().astype(int)]].copy()
    labels = np.zeros(len(points), int)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
        labels = distances.argmin(1)
        for c in range(k):
            if np.any(labels == c):
                centres[c] = points[labels == c].mean(0)
    return labels


def assign_experiments(features):
    """{image id: experiment key} from {image id: image_features(...)}."""
    groups = {}
    for image_id, (kind, shape, _, _) in features.items():
        groups.setdefault((kind, shape), []).append(image_id)
    experiments = {}
    for (kind, shape), ids in groups.items():
        ids = sorted(ids)
        k = max(1, int(round(len(ids) / IMAGES_PER_CLUSTER)))
        labels = np.zeros(len(ids), int)
        if k > 1:
            points = np.array([features[i][2:] for i in ids])
            points = (points - points.mean(0)) / (points.std(0) + 1e-9)
            labels = kmeans(points, k)
        for image_id, label in zip(ids, labels):
            experiments[image_id] = f"{kind}-{shape[0]}x{shape[1]}-{label}"
    return experiments


def held_out(experiments, kinds, fraction):
    """The experiments to hold out: per kind, in the order of their keys' hashes, until at
    least ``fraction`` of the kind's images are out; an experiment larger than twice that share
    of its kind is never held out."""
    sizes = {}
    for image_id, key in experiments.items():
        sizes[key] = sizes.get(key, 0) + 1
    chosen = set()
    for kind in sorted(set(kinds.values())):
        total = sum(1 for i in kinds if kinds[i] == kind)
        keys = sorted({experiments[i] for i in kinds if kinds[i] == kind},
                      key=lambda key: hashlib.sha1(key.encode()).hexdigest())
        out = 0
        for key in keys:
            if out >= fraction * total:
                break
            if sizes[key] <= 2 * fraction * total:
                chosen.add(key)
                out += sizes[key]
    return chosen


def link_folder(folder, image_dirs):
    """A folder of symbolic links named by image id, made anew. Only the links of an earlier
    run are removed: a folder holding anything else is refused before anything changes."""
    os.makedirs(folder, exist_ok=True)
    entries = [os.path.join(folder, name) for name in os.listdir(folder)]
    others = [path for path in entries if not os.path.islink(path)]
    if others:
        raise SystemExit(f"{folder} holds {others[0]}, which is not a link this script made; "
                         "choose another --out")
    for path in entries:
        os.remove(path)
    for image_dir in image_dirs:
        os.symlink(os.path.abspath(image_dir), os.path.join(folder, os.path.basename(image_dir)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="folder holding stage1_train")
    parser.add_argument("--subset", default="stage1_train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="share of each kind's images to hold out (default 0.1)")
    args = parser.parse_args(argv)
    try:
        features, folders = read_features(args.dataset, args.subset)
    except ValueError as err:   # names the folder or image and the problem
        raise SystemExit(str(err)) from err
    ids = sorted(features)
    experiments = assign_experiments(features)
    kinds = {i: features[i][0] for i in ids}
    test_keys = held_out(experiments, kinds, args.fraction)
    test = [i for i in ids if experiments[i] in test_keys]
    train = [i for i in ids if experiments[i] not in test_keys]
    for name, members in (("experiment_train", train), ("experiment_test", test)):
        link_folder(os.path.join(args.out, name), [folders[i] for i in members])
    record = {i: {"kind": features[i][0], "shape": features[i][1],
                  "log_mean_grey": features[i][2], "log_median_area": features[i][3],
                  "experiment": experiments[i], "held_out": i in test} for i in ids}
    with open(os.path.join(args.out, "experiments.json"), "w") as f:
        json.dump(record, f, indent=1)
    for kind in sorted(set(kinds.values())):
        keys = sorted(test_keys & {experiments[i] for i in ids if kinds[i] == kind})
        n_test = sum(1 for i in test if kinds[i] == kind)
        n_all = sum(1 for i in ids if kinds[i] == kind)
        print(f"{kind}: {n_test} of {n_all} images held out, experiments {keys}")
    print(f"experiment_train: {len(train)} images, experiment_test: {len(test)} images "
          f"({len(set(experiments.values()))} experiments in all)")


if __name__ == "__main__":
    main()
