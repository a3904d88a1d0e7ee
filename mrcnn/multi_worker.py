"""Training across machines: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by the
standard ``TF_CONFIG`` environment variable, with TensorFlow's custom training loop.

Keras 3's ``model.fit`` does not run under this strategy (keras-team/keras#20585: it fails
converting the distributed batch, "PerReplica ... to a Tensor"; reproduced with Keras 3.15 /
TensorFlow 2.21), so :func:`fit_multi_worker` is the loop TensorFlow documents for it:
``strategy.run`` of a step that computes the model's own loss (``compute_loss``, already divided
by the replicas in sync) and applies the Keras optimizer, whose update all-reduces the
gradients. Each worker reads its own shard of the images (``DataGenerator(shard=...)``), so the
global batch is IMAGES_PER_GPU x GPU_COUNT x workers and LEARNING_RATE is the global batch's.
The chief (worker 0, or the ``chief`` task) alone writes checkpoints, optimizer state,
history.csv and TensorBoard scalars; the other workers write nothing. Workers restarted with
``--weights last`` (a shared ``--logs`` folder) resume from the chief's newest checkpoint.
"""

import json
import logging
import os
import time

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def cluster():
    """(number of workers, this task's index, is chief) from TF_CONFIG; (1, 0, True) without."""
    spec = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    members = spec.get("cluster", {})
    workers = len(members.get("worker", [])) + len(members.get("chief", []))
    task = spec.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "worker" and members.get("chief"):
        index += 1                        # the chief is task 0 of the data shards
    chief = kind == "chief" or (kind == "worker" and index == 0 and not members.get("chief"))
    return max(workers, 1), index, chief


def is_multi_worker():
    """True when TF_CONFIG describes a cluster of more than one worker."""
    return cluster()[0] > 1


def _split_for_local_replicas(strategy, batch, per_worker, local):
    """The worker's batch split between its ``local`` replicas (one per local GPU)."""
    if local == 1:
        return batch
    size = per_worker // local

    def value(ctx):
        k = ctx.replica_id_in_sync_group % local
        return {name: array[k * size:(k + 1) * size] for name, array in batch.items()}
    return strategy.experimental_distribute_values_from_function(value)


def fit_multi_worker(keras_model, config, generator, *, strategy, epochs, initial_epoch,
                     callbacks, log_dir, time_budget_seconds=None, verbose=1):
    """Train ``keras_model`` (compiled under ``strategy``'s scope) from ``initial_epoch`` to
    ``epochs`` on this worker's ``generator`` shard.

    ``callbacks`` get the usual epoch and batch hooks (the chief's write files). The time
    budget is agreed between workers at every epoch end (once any worker's has run out, all
    stop), so all stop after the same step.

    Returns:
        a keras.callbacks.History with the epoch logs.
    """
    model = keras_model
    optimizer = model.optimizer
    trackers = list(model.loss_trackers.values())
    workers, _, chief = cluster()
    local_replicas = max(1, strategy.num_replicas_in_sync // workers)

    def replica_step(batch):
        with tf.GradientTape() as tape:
            y_pred = model(batch, training=True)
            loss = model.compute_loss(x=batch, y_pred=y_pred, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def agree(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(lambda v: tf.identity(v), args=(value,)), axis=None)

    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(list(callbacks) + [history], model=model)
    writer = tf.summary.create_file_writer(log_dir) if chief else None
    deadline = time.time() + time_budget_seconds if time_budget_seconds else None
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        for tracker in trackers:
            tracker.reset_state()
        callback_list.on_epoch_begin(epoch)
        total, started = 0.0, time.time()
        for step in range(config.STEPS_PER_EPOCH):
            (batch,) = generator[step]
            batch = _split_for_local_replicas(strategy, batch, config.BATCH_SIZE,
                                              local_replicas)
            total += float(train_step(batch))
            callback_list.on_train_batch_end(step, {"loss": total / (step + 1)})
        logs = {"loss": total / config.STEPS_PER_EPOCH}
        logs.update({t.name: float(t.result()) for t in trackers})
        callback_list.on_epoch_end(epoch, logs)
        if writer is not None:
            with writer.as_default(step=epoch + 1):
                for key, value in logs.items():
                    if isinstance(value, (int, float, np.floating)):
                        tf.summary.scalar(f"epoch_{key}", value)
        if verbose:
            log.info("worker epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, epochs, logs["loss"],
                     time.time() - started)
        generator.on_epoch_end()
        expired = float(deadline is not None and time.time() >= deadline)
        if float(agree(tf.constant(expired))) > 0:     # every worker stops after this epoch
            break
    callback_list.on_train_end()
    if writer is not None:
        writer.flush()
    return history
