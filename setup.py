"""Install with ``pip install -e .`` (add ``[dev]`` for the tests)."""

from setuptools import find_packages, setup

setup(
    # Not "mrcnn": PyPI's mrcnn is Matterport's 2018 TF1 upload.
    name="mrcnn-keras3",
    version="0.1.0",
    description="Mask R-CNN for Keras 3 / TensorFlow 2 with pluggable backbones "
                "(Matterport-compatible API)",
    long_description=open("README.md", encoding="utf8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # samples.nucleus is the DSB2018 command line (python samples/nucleus/train.py ...).
    packages=find_packages(include=["mrcnn", "mrcnn.*", "backbones", "backbones.*",
                                    "samples", "samples.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "scipy",
        "scikit-image",
        "h5py",
        "opencv-python-headless",
        "pycocotools",
        "tensorboard",
        "albumentations",
        "matplotlib",
    ],
    extras_require={
        # pytest-xdist: the README's test command runs the suite in two worker processes.
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "nbclient", "nbformat", "ipykernel",
                "tf2onnx", "onnxruntime"],
        # ONNX export of the network (mrcnn.export): tf2onnx converts, onnxruntime runs it.
        "onnx": ["tf2onnx", "onnxruntime"],
        # imgaug augmenters (Matterport code): the maintained fork imaug. Its OpenCV < 4.13
        # pins bring NumPy 2.2 and OpenCV 4.12 into the environment (README "imgaug").
        "imgaug": ["imaug"],
        "coco": ["pycocotools"],
        "aug": ["albumentations"],
        "notebooks": ["jupyter", "nbconvert", "nbformat", "ipykernel", "nbclient"],
    },
    license="MIT",
)
