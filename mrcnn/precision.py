"""Choosing the convolutions' arithmetic: float32, or bfloat16 / float16 where the hardware runs
them fast.

* CPUs: bfloat16 where TensorFlow's oneDNN runs it faster than float32 — Intel CPUs with
  AMX-BF16 and AMD CPUs with AVX512-BF16 (measured on the project's AMD EPYC: 1.7x) — else
  float32. An Intel Xeon that advertises AVX512-BF16 without AMX ran the nucleus training step
  in 0.80 s in bfloat16 and 0.62 s in float32, and detect in 0.94 s vs 0.59 s, so AVX512-BF16
  alone does not choose bfloat16 on Intel. One with AMX (family 6 model 207) ran it in 0.30 s
  in bfloat16 and 0.41 s in float32, and detect in 0.15 s vs 0.25 s per DSB2018 image.
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


def cpu_prefers_bfloat16(cpuinfo_path="/proc/cpuinfo"):
    """True when bfloat16 convolutions beat float32 on this CPU: AMX-BF16 (Intel), or
    AVX512-BF16 on an AMD CPU (see the module docstring for the measurements).

    Reads the Linux ``vendor_id`` and ``flags`` lines; False elsewhere or when the file
    cannot be read.
    """
    vendor, flags = "", set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


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
        chosen = "bfloat16" if cpu_prefers_bfloat16(cpuinfo_path) else "float32"
    log.info("COMPUTE_DTYPE auto: %s", chosen)
    return chosen
