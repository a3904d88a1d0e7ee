"""Data path: Dataset API, example loading, RPN targets, batching and augmentation."""

from mrcnn.data.dataset import Dataset

__all__ = ["Dataset"]
