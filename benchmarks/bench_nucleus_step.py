"""Training-step time of the nucleus from-scratch configuration under config variants.

    python benchmarks/bench_nucleus_step.py [--dataset ../shared/data/dsb2018] \
        [--variant '{}' --variant '{"TOP_DOWN_PYRAMID_SIZE": 256, "MASK_HEAD_CHANNELS": 256}'] \
        [--weights runs/x/nucleus.../mask_rcnn_nucleus_0050.weights.h5] [--rounds 3]

Each variant is a JSON object of Config overrides on top of the CLI's from-scratch defaults
(``SCRATCH_OVERRIDES``). Batches are real DSB2018 training crops when ``--dataset`` exists,
else synthetic nuclei. Prints the median ``train_on_batch`` seconds over 6 batches after 2
warm-ups, and the parameter count. This is how the 128-channel FPN/mask-head default was chosen.
The key ``"fused_adamw"`` (not a Config field) picks the AdamW implementation: ``false`` for
Keras's, ``true`` for ``mrcnn.optimizers.FusedAdamW`` (default: what training uses):

    python benchmarks/bench_nucleus_step.py --variant '{"fused_adamw": false}' \
        --variant '{"fused_adamw": true}' --rounds 3

``--optimizer-update`` times only the optimizer's update of the model's trainable variables
(random gradients, Keras's AdamW and FusedAdamW alternated 40 times), which a whole step's
spread (about 5 % between rounds) hides.

``--data-loading`` measures the training data path: the CPU seconds of one batch (crops,
augmentation, RPN targets) with the decoded-image cache (``IMAGE_CACHE_MB``) and without, and
the median step inside ``fit`` fed by the data generator with and without the cache and by
the same batches prepared beforehand (no data work during the step), and those prepared
batches through ``train_on_batch`` (no ``fit`` machinery: iterator, callbacks), alternated
``--rounds`` times in one process, in ``--compute-dtype`` (default float32):

    python benchmarks/bench_nucleus_step.py --data-loading --rounds 5 --compute-dtype bfloat16 \
        --weights runs/dsb58/nucleus.../mask_rcnn_nucleus_0108.weights.h5

``--weights`` starts every variant from a trained checkpoint (by layer name), so the RPN
proposes real nuclei and the mask head sees as many positive ROIs as in a late epoch;
``--rounds`` measures the variants in turn that many times (the machine's speed drifts).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_dataset(dataset_dir):
    from samples.nucleus.nucleus import NucleusDataset
    if not os.path.isdir(os.path.join(dataset_dir or "", "stage1_train")):
        from mrcnn.data.synthetic import write_synthetic_dsb
        dataset_dir = tempfile.mkdtemp(prefix="bench_nuclei_")
        write_synthetic_dsb(dataset_dir, 12, size=256, seed=0, subset="stage1_train")
        print(f"no DSB data: synthetic nuclei in {dataset_dir}")
    dataset = NucleusDataset().load_nucleus(dataset_dir, "stage1_train")
    dataset.prepare()
    return dataset


def compiled_training_model(config, weights=None, learning_rate=3e-5, train_bn=False,
                            fused=None):
    """The training Keras model of ``config``, started from ``weights`` (a checkpoint, by
    layer name) when given, every layer trainable (BatchNorm only with ``train_bn``), compiled
    with the training optimizer (``fused``: see ``make_optimizer``) at ``learning_rate``."""
    from mrcnn import model as modellib
    from mrcnn import training as training_lib
    model = modellib.MaskRCNN("training", config, tempfile.mkdtemp(prefix="bench_logs_"))
    if weights:
        model.load_weights(weights)
    training_lib.set_trainable(model.keras_model, ".*", train_bn)
    model.keras_model.compile(
        optimizer=training_lib.make_optimizer(config, learning_rate, fused=fused),
        jit_compile=False)
    return model.keras_model


def measure(dataset, overrides, batches=8, warmups=2, weights=None):
    from samples.nucleus.cli_common import make_config
    from samples.nucleus.cli_train import SCRATCH_OVERRIDES
    from mrcnn.modeling.factory import backbone_norm
    from mrcnn.data.generator import DataGenerator
    overrides = dict(overrides)
    fused = overrides.pop("fused_adamw", None)
    config = make_config(dict(SCRATCH_OVERRIDES, **overrides))
    keras_model = compiled_training_model(config, weights, 1e-3,
                                          backbone_norm(config) == "batch", fused)
    generator = DataGenerator(dataset, config, shuffle=True, steps=batches, seed=1)
    data = [generator[i][0] for i in range(batches)]
    times = []
    for i, batch in enumerate(data):
        start = time.perf_counter()
        keras_model.train_on_batch(batch)
        if i >= warmups:
            times.append(time.perf_counter() - start)
    return float(np.median(times)), keras_model.count_params()


def measure_optimizer_update(repeats=40):
    """Median seconds of one AdamW update of the nucleus model's trainable variables, with
    Keras's AdamW and with FusedAdamW, alternated ``repeats`` times."""
    import tensorflow as tf
    from samples.nucleus.cli_common import make_config
    from samples.nucleus.cli_train import SCRATCH_OVERRIDES
    from mrcnn import model as modellib
    from mrcnn.optimizers import make_optimizer
    config = make_config(dict(SCRATCH_OVERRIDES, COMPUTE_DTYPE="float32"))
    model = modellib.MaskRCNN("training", config, tempfile.mkdtemp(prefix="bench_logs_"))
    variables = model.keras_model.trainable_variables
    gradients = [tf.random.normal(v.shape, stddev=0.01) for v in variables]
    updates = {}
    for fused in (False, True):
        optimizer = make_optimizer(config, 3e-4, fused=fused)
        optimizer.build(variables)
        updates[fused] = tf.function(
            lambda g, optimizer=optimizer: optimizer.apply_gradients(zip(g, variables)))
        updates[fused](gradients)
    seconds = {False: [], True: []}
    for repeat in range(repeats):
        for fused in (False, True) if repeat % 2 == 0 else (True, False):
            start = time.perf_counter()
            updates[fused](gradients)
            seconds[fused].append(time.perf_counter() - start)
    return len(variables), {k: float(np.median(v)) for k, v in seconds.items()}


def measure_data_loading(dataset, weights=None, rounds=3, steps=40, compute_dtype="float32"):
    """(CPU seconds per batch by cache setting, median step seconds by feed over the rounds):
    ``fit`` fed by "cache", "no cache" (IMAGE_CACHE_MB=0) and "prepared" (batches made
    beforehand), and "train_on_batch" of the prepared batches; the nucleus augmentation on,
    every generator warmed first."""
    import keras
    from samples.nucleus.cli_common import make_config
    from samples.nucleus.cli_train import SCRATCH_OVERRIDES
    from mrcnn.data.augment import default_augmentation
    from mrcnn.data.generator import DataGenerator
    configs = {name: make_config(dict(SCRATCH_OVERRIDES, COMPUTE_DTYPE=compute_dtype,
                                      IMAGE_CACHE_MB=megabytes))
               for name, megabytes in (("cache", 1024), ("no cache", 0))}
    keras_model = compiled_training_model(configs["cache"], weights)
    feeds, cpu = {}, {}
    for seed, (name, config) in enumerate(configs.items()):
        # An epoch of the generator is one pass over the images: the first reads (and
        # caches) every image and its masks, the timing is on the next.
        feeds[name] = DataGenerator(dataset, config, augmentation=default_augmentation(),
                                    seed=seed)
        for index in range(len(feeds[name])):
            feeds[name][index]
        feeds[name].on_epoch_end()
        start = time.process_time()
        for index in range(steps):
            feeds[name][index]
        cpu[name] = (time.process_time() - start) / steps
    prepared = [feeds["cache"][index] for index in range(steps)]

    class Prepared(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, index):
            return prepared[index]

    feeds["prepared"] = Prepared(workers=1)

    class StepTimes(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    def train_on_batch_seconds():
        seconds = []
        for (batch,) in prepared:
            start = time.perf_counter()
            keras_model.train_on_batch(batch)
            seconds.append(time.perf_counter() - start)
        return seconds

    medians = {name: [] for name in list(feeds) + ["train_on_batch"]}
    for _ in range(rounds):
        medians["train_on_batch"].append(float(np.median(train_on_batch_seconds()[3:])))
        for name, feed in feeds.items():
            timer = StepTimes()
            timer.seconds = []
            keras_model.fit(feed, epochs=1, steps_per_epoch=steps, callbacks=[timer],
                            verbose=0)
            medians[name].append(float(np.median(timer.seconds[3:])))
            feed.on_epoch_end()
    return cpu, {name: float(np.median(values)) for name, values in medians.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=os.path.join(ROOT, "..", "shared", "data", "dsb2018"))
    parser.add_argument("--weights", default=None,
                        help="trained checkpoint every variant starts from (same architecture)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variant", action="append", default=None,
                        help="JSON Config overrides (repeatable); default: the CLI defaults and "
                             "the 256-channel FPN/mask head")
    parser.add_argument("--optimizer-update", action="store_true",
                        help="time only the AdamW update, Keras's against FusedAdamW")
    parser.add_argument("--data-loading", action="store_true",
                        help="time the data path: CPU per batch, and fit steps fed by the "
                             "generator with and without the image cache or by prepared "
                             "batches, and those batches through train_on_batch")
    parser.add_argument("--compute-dtype", default="float32",
                        help="COMPUTE_DTYPE of --data-loading (float32, bfloat16, auto)")
    args = parser.parse_args(argv)
    if args.data_loading:
        cpu, steps = measure_data_loading(load_dataset(args.dataset), args.weights,
                                          args.rounds, compute_dtype=args.compute_dtype)
        for name, seconds in cpu.items():
            print(f"data work per batch, {name}: {1000 * seconds:.1f} ms CPU", flush=True)
        for name, seconds in steps.items():
            what = "train_on_batch of the prepared batches" if name == "train_on_batch" \
                else f"fit step fed by {name}"
            print(f"{what}: {seconds:.3f} s (median over {args.rounds} rounds, "
                  f"{args.compute_dtype})", flush=True)
        return
    if args.optimizer_update:
        count, seconds = measure_optimizer_update()
        print(f"AdamW update of {count} trainable variables: Keras {1000 * seconds[False]:.1f} "
              f"ms, FusedAdamW {1000 * seconds[True]:.1f} ms (medians)", flush=True)
        return
    variants = [json.loads(v) for v in args.variant or
                ['{}', '{"TOP_DOWN_PYRAMID_SIZE": 256, "MASK_HEAD_CHANNELS": 256}']]
    dataset = load_dataset(args.dataset)
    for round_ in range(args.rounds):
        for overrides in variants:
            seconds, params = measure(dataset, overrides, weights=args.weights)
            print(f"round {round_ + 1} {json.dumps(overrides)}: train step {seconds:.3f} s "
                  f"(median), {params / 1e6:.1f} M parameters", flush=True)


if __name__ == "__main__":
    main()
