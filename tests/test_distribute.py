"""GPU_COUNT > 1 trains under MirroredStrategy (two logical CPU devices, in a subprocess
because logical devices must be set before TensorFlow starts)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import math, sys
    import tensorflow as tf
    # Each replica's blocking all-reduce holds an inter-op thread; with the default pool of
    # one thread per core, two replicas on a 2-core machine can deadlock.
    tf.config.threading.set_inter_op_parallelism_threads(8)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.conftest import TinyConfig
    from mrcnn import model as modellib
    from mrcnn.data.synthetic import SyntheticNucleiDataset
    from mrcnn.losses import LOSS_NAMES

    class TwoDevices(TinyConfig):
        GPU_COUNT = 2
        IMAGES_PER_GPU = 1
        STEPS_PER_EPOCH = 2

    ds = SyntheticNucleiDataset().load_synthetic(4, size=128, seed=2)
    ds.prepare()
    model = modellib.MaskRCNN("training", TwoDevices(), sys.argv[1])
    assert model.strategy.num_replicas_in_sync == 2, model.strategy
    h = model.train(ds, None, 1e-3, 1, "all", verbose=0).history
    parts = sum(h[k][0] for k in LOSS_NAMES) + h["weight_decay_loss"][0]
    assert math.isfinite(h["loss"][0])
    assert abs(h["loss"][0] - parts) < 1e-3 * max(1.0, parts), (h, parts)
    print("OK", model.strategy.num_replicas_in_sync)
""")


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 2" in proc.stdout
