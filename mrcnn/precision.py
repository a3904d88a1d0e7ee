"""Choosing the convolutions' arithmetic: float32, or bfloat16 / float16 where the hardware runs
them fast.

* CPUs: bfloat16 where the CPU has native bfloat16 dot products (AVX512-BF16, AMX), else
  float32 (emulated bfloat16 is slower than float32).
* NVIDIA GPUs: bfloat16 from compute capability 8.0 (A100, L4, H100: bfloat16 tensor cores
  and float32's range, no loss scaling), float16 on 7.x (T4, V100: float16 tensor cores;
  training scales the loss, Keras's LossScaleOptimizer), float32 below.

Weights stay float32 in every case (Keras's mixed policies), so weight files are the same.
"""

import logging

log = logging.getLogger(__name__)

CHOICES = ("float32", "bfloat16", "float16", "auto")
# COMPUTE_DTYPE -> the Keras dtype policy the convolutions are built under.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def cpu_has_native_bfloat16(cpuinfo_path="/proc/cpuinfo"):
    """True when the CPU advertises bfloat16 dot products (AVX512-BF16 or AMX-BF16).

    Reads the Linux ``flags`` line; False elsewhere or when the file cannot be read.
    """
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def gpu_compute_dtype(capabilities):
    """The fast arithmetic of GPUs with these compute capabilities [(major, minor), ...]:
    bfloat16 if every one is 8.0 or newer, float16 if every one is 7.0 or newer, else
    float32 (an unknown capability counts as old)."""
    caps = [tuple(c) if c else (0, 0) for c in capabilities]
    if caps and min(caps) >= (8, 0):
        return "bfloat16"
    if caps and min(caps) >= (7, 0):
        return "float16"
    return "float32"


def gpu_capabilities():
    """Compute capabilities of the visible GPUs ([] without GPUs)."""
    import tensorflow as tf
    return [tf.config.experimental.get_device_details(gpu).get("compute_capability")
            for gpu in tf.config.list_physical_devices("GPU")]


def resolve_compute_dtype(value, cpuinfo_path="/proc/cpuinfo", gpus=None):
    """Config.COMPUTE_DTYPE -> "float32", "bfloat16" or "float16".

    "auto" follows the module docstring: the GPUs' capabilities when there are GPUs
    (``gpus``, a list of (major, minor), overrides what TensorFlow reports), else the CPU.
    """
    if value not in CHOICES:
        raise ValueError(f"COMPUTE_DTYPE={value!r}; use one of {CHOICES}.")
    if value != "auto":
        return value
    gpus = gpu_capabilities() if gpus is None else gpus
    if gpus:
        chosen = gpu_compute_dtype(gpus)
    else:
        chosen = "bfloat16" if cpu_has_native_bfloat16(cpuinfo_path) else "float32"
    log.info("COMPUTE_DTYPE auto: %s", chosen)
    return chosen
