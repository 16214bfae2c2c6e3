"""What a joint model's decoder reads (issue 45): models.pixel_bypass walks the Keras graph, and every experiment
table says, per joint row, whether its model has a pixel bypass."""
import json
from pathlib import Path

import keras
import pytest
from keras import layers

from cifar_ae import experiments as X
from cifar_ae import models as M
from cifar_ae.bypass import pixel_bypass

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _toy(skip=False, linear_copy=False):
    """image -> conv+relu (+ a linear copy of the pixels) = `features` -> label head and decoder (+ a skip)."""
    image = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    if linear_copy:
        x = layers.Concatenate()([x, layers.Conv2D(3, 1)(image)])
    code = layers.Activation("linear", name="features")(x)
    label = layers.Dense(10, activation="softmax", name="label")(layers.GlobalAveragePooling2D()(code))
    r = layers.Conv2D(3, 1, activation="sigmoid")(code)
    if skip:
        r = layers.Add()([r, image])
    return keras.Model(image, {"reconstruction": layers.Activation("linear", name="reconstruction")(r), "label": label})


@pytest.mark.parametrize("model, bypass", [
    (lambda: _toy(), False),
    (lambda: _toy(skip=True), True),  # a path around the code
    (lambda: _toy(linear_copy=True), True),  # a linear copy of the pixels inside the code
    (lambda: M.fast_joint(), True),  # v4: the 48-channel patch_code beside the code
    (lambda: M.fast_joint(patch_channels=0), False),
    (lambda: M.resnet_joint(), False),
    (lambda: M.resnet_joint(patch_channels=48), True),
    (lambda: M.joint_model(), False),  # the study's v2
])
def test_pixel_bypass_finds_skips_and_linear_copies(model, bypass):
    assert pixel_bypass(model()) is bypass


def test_every_table_labels_its_joint_rows_as_their_graphs_are():
    """Each committed experiment table's JSON holds pixel_bypass for every row, equal to its model's graph."""
    checked = 0
    for path in sorted(X.EXPERIMENTS_DIR.glob("*.toml")):
        experiment = X.load_experiment(path)
        table = RESULTS / f"{experiment.name}.json"
        if not table.is_file():
            continue
        for row in json.loads(table.read_text())["rows"]:
            assert "pixel_bypass" in row, (table, row["row"])
            assert row["pixel_bypass"] == X.pixel_bypass(experiment.rows[row["row"]].trial), (table, row["row"])
            checked += row["pixel_bypass"] is not None
    assert checked > 0


def test_the_frontier_draws_joint_rows_as_points_and_the_classifier_alone_as_a_line():
    from cifar_ae.plots import accuracy_against_mse
    rows = [{"row": "recon40", "val_accuracy": 0.85, "test_accuracy": 0.84, "recon_mse": 0.004, "pixel_bypass": False},
            {"row": "recon10", "val_accuracy": 0.87, "test_accuracy": 0.86, "recon_mse": 0.008, "pixel_bypass": False},
            {"row": "alone", "val_accuracy": 0.88, "test_accuracy": 0.87, "recon_mse": 0.05, "pixel_bypass": None},
            {"row": "bypass", "val_accuracy": 0.89, "test_accuracy": 0.88, "recon_mse": 0.0009, "pixel_bypass": True}]
    ax = accuracy_against_mse(rows).axes[0]
    points = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert len(points) == 6 and (0.0009, 89.0) in [(round(x, 4), round(y, 1)) for x, y in points]
    # the classifier alone: lines (validation, test), no MSE point
    assert [line.get_ydata()[0] for line in ax.get_lines()] == [88.0, 87.0]
    assert ax.get_ylim()[0] < 84.0 and ax.get_ylim()[1] > 89.0  # every point inside the axes
    assert [t.get_text() for t in ax.texts] == ["recon40", "recon10", "bypass (pixel bypass)"]


def test_a_frontier_point_pairs_the_kept_epochs_validation_numbers_and_test_with_test():
    """Where a row has the hold-out's numbers, its filled point is the kept (last) epoch's validation accuracy at its
    validation MSE, never the best epoch's accuracy beside another epoch's MSE; its hollow point is test with test."""
    from cifar_ae.plots import accuracy_against_mse
    rows = [{"row": "recon40", "val_accuracy": 0.90, "val_accuracy_last": 0.89, "val_recon_mse": 0.002,
             "test_accuracy": 0.88, "recon_mse": 0.003, "pixel_bypass": False}]
    ax = accuracy_against_mse(rows).axes[0]
    points = [tuple(round(v, 4) for v in c.get_offsets()[0]) for c in ax.collections]
    assert points == [(0.002, 89.0), (0.003, 88.0)]
