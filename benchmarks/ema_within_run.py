"""Exponential moving averages (EMA) of the weights, measured within one training run: the
``train`` command as given, with EMA copies of every weight kept beside it for several
decays, and the raw weights and each average written when every stage ends. Evaluating
them pairs the averages with the weights they come from: the same run, no seed noise.

    python benchmarks/ema_within_run.py --decays 0.99,0.998,0.9995 -- \\
        --dataset ../shared/data/dsb2018 --subset train --weights none --time-budget 58 \\
        --heads-epochs 100 --all-epochs 200 --seed 5 --logs runs/ema --set EVAL_EVERY_N_EPOCHS=0
    python samples/nucleus/train.py evaluate --dataset ../shared/data/dsb2018 --subset val \\
        --logs runs/ema --weights runs/ema/ema/ema0.998_stage2.weights.h5 \\
        --set COMPUTE_DTYPE=float32

Everything after ``--`` is the ``train`` command's arguments. Writes
``<logs>/ema/raw_stage<k>.weights.h5`` and ``<logs>/ema/ema<decay>_stage<k>.weights.h5``
(k = 1, 2: the stages of the run), with the run's ``run_config.json`` beside them so
``evaluate --weights <file>`` builds the same model.

The averages are updated every ``--every`` steps (4: about 3 % of a step's time for three
decays, instead of 14 % every step) with the decay raised to that power, so a decay d
averages over about 1 / (1 - d) steps; during the first updates the decay is lowered to
(1 + n) / (3 + n) after n updates, so the random initial weights are forgotten. Result
(docs/results.md, "An exponential moving average of the weights"): no average beat the
weights after the lr/10 stage.
"""

import argparse
import logging
import os
import shutil

import keras
import tensorflow as tf

from mrcnn.weights import save_weights_by_name


class WeightShadows(keras.callbacks.Callback):
    """Keep an exponential moving average of the model's float32 weights for each of
    ``decays`` (per training step), updated every ``every`` steps; write the raw weights and
    each average to ``out_dir`` when a fit ends (``raw_stage<k>``, ``ema<decay>_stage<k>``).

    The same object added to several fits (the stages of one run) continues its averages.
    """

    def __init__(self, decays, out_dir, every=4):
        super().__init__()
        self.decays = tuple(float(d) for d in decays)
        self.out_dir = out_dir
        self.every = int(every)
        self.shadows = None
        self.updates = tf.Variable(0.0, trainable=False)
        self.batches = 0
        self.stage = 0
        self.written = []

    def on_train_begin(self, logs=None):
        self.variables = [w for w in self.model.weights if w.dtype == "float32"]
        if self.shadows is None:
            self.shadows = [[tf.Variable(keras.ops.convert_to_numpy(v), trainable=False)
                             for v in self.variables] for _ in self.decays]
        self._update = tf.function(self._update_shadows)

    def _update_shadows(self):
        self.updates.assign_add(1.0)
        warm = (1.0 + self.updates) / (3.0 + self.updates)
        for decay, shadows in zip(self.decays, self.shadows):
            d = tf.minimum(tf.constant(decay ** self.every), warm)
            for shadow, variable in zip(shadows, self.variables):
                shadow.assign(d * shadow + (1.0 - d) * tf.cast(variable.value, tf.float32))

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches % self.every == 0:
            self._update()

    def averages(self):
        """{decay: [numpy arrays in the order of the model's float32 weights]}."""
        return {d: [s.numpy() for s in shadows] for d, shadows in zip(self.decays, self.shadows)}

    def on_train_end(self, logs=None):
        self.stage += 1
        os.makedirs(self.out_dir, exist_ok=True)
        raw = [keras.ops.convert_to_numpy(v) for v in self.variables]
        self.written.append(save_weights_by_name(
            self.model, os.path.join(self.out_dir, f"raw_stage{self.stage}.weights.h5")))
        try:
            for decay, shadows in zip(self.decays, self.shadows):
                for variable, shadow in zip(self.variables, shadows):
                    variable.assign(shadow.numpy())
                self.written.append(save_weights_by_name(self.model, os.path.join(
                    self.out_dir, f"ema{decay:g}_stage{self.stage}.weights.h5")))
        finally:
            for variable, value in zip(self.variables, raw):
                variable.assign(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decays", default="0.99,0.998,0.9995",
                        help="per-step decays, comma-separated")
    parser.add_argument("--every", type=int, default=4, help="update the averages every N steps")
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="-- then the train command's arguments")
    args = parser.parse_args()
    train_argv = [a for a in args.train_args if a != "--"]

    from samples.nucleus.cli_common import RUN_CONFIG_FILE
    from samples.nucleus.cli_train import run_train
    from samples.nucleus.train import build_parser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    train_args = build_parser().parse_args(["train"] + train_argv)
    train_args.argv = ["train"] + train_argv
    out_dir = os.path.join(train_args.logs, "ema")
    shadows = WeightShadows([float(d) for d in args.decays.split(",")], out_dir, args.every)
    model = run_train(train_args, callbacks=[shadows])
    config = os.path.join(model.log_dir, RUN_CONFIG_FILE)
    if os.path.exists(config):
        shutil.copy(config, os.path.join(out_dir, RUN_CONFIG_FILE))
    for path in shadows.written:
        print(path)


if __name__ == "__main__":
    main()
