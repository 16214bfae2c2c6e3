"""TensorBoard scalars for every run, in <run>/tensorboard/{train,validation}: one point per epoch (losses,
accuracies, MSE, learning rate), written by keras.callbacks.TensorBoard, scalars only (no graph, histograms or
profile: a smoke run's files are a few KB).

A killed run must not log an epoch twice. Keras' callback writes at each epoch's end, before the run's checkpoint
commits that epoch, and again when the resumed run repeats it. `CommittedTensorBoard` therefore runs after
resume.RunState (its commit) and writes only committed epochs, flushing each to disk; evaluation's
`evaluation_*_vs_iterations` points (written mid-epoch, before any commit) are left out. An epoch committed but
killed before its points reached the disk is written from state.json when the run resumes.

    tensorboard --logdir runs/          # every run under a runs root, side by side
"""
from __future__ import annotations

from pathlib import Path

import keras

FOLDER = "tensorboard"
TIMING_COLUMNS = ("epoch", "train_seconds", "epoch_seconds", "train_user_seconds", "train_sys_seconds")


def available() -> bool:
    """Keras writes TensorBoard files through tf.summary: without TensorFlow installed (a JAX-only machine) runs
    write none."""
    try:
        import tensorflow.summary  # noqa: F401
    except ImportError:
        return False
    return True


def callbacks(run, state) -> list:
    """[the run's TensorBoard callback] (after `state`, a resume.RunState, in the callback list), or []."""
    return [CommittedTensorBoard(run, state)] if available() else []


def logged_steps(folder, tag="epoch_loss") -> list[int]:
    """Every step logged for `tag` in the event files under `folder`, in file order (a step twice means a
    duplicate), read with TensorBoard's own event-file loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util
    steps = []
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    tensor_util.make_ndarray(value.tensor)  # a readable scalar, not just a tag
                    steps.append(int(event.step))
    return steps


class CommittedTensorBoard(keras.callbacks.TensorBoard):
    """keras.callbacks.TensorBoard for one run folder, writing only the epochs `state` has committed."""

    def __init__(self, run, state):
        super().__init__(log_dir=str(Path(run) / FOLDER), histogram_freq=0, write_graph=False, write_images=False,
                         write_steps_per_second=False, update_freq="epoch", profile_batch=0, embeddings_freq=0)
        self.state = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        done = set(logged_steps(Path(self.log_dir) / "train"))
        for row in self.state.state["history"]:  # committed before a kill, its points lost with the process
            if int(row["epoch"]) not in done:
                self._log_epoch_metrics(int(row["epoch"]), {k: v for k, v in row.items() if k not in TIMING_COLUMNS})
        self._flush()

    def on_test_end(self, logs=None):
        self._pop_writer()  # no mid-epoch points: the epoch is not committed yet

    def on_epoch_end(self, epoch, logs=None):
        if self.state.epochs_done == epoch + 1:  # RunState ran first and committed this epoch
            super().on_epoch_end(epoch, logs)
            self._flush()

    def _flush(self):
        for writer in self._writers.values():
            writer.flush()
