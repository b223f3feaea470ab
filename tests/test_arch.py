"""The arch.json record (search_spaces.arch): one builder for searches, trials and tests."""

import json

import pytest

from dynopool_nas import dynopool_layers
from search_spaces.arch import (
    METRICS,
    SCHEMA_VERSION,
    architecture_record,
    build_model,
    load_architecture,
    save_architecture,
)
from search_spaces.cells import DynOPoolCellSpace
from search_spaces.registry import space_fields


def test_the_record_holds_json_lists_the_recorded_metrics_and_the_space():
    arch = architecture_record(
        (1, 16, 16), {"width": 8}, {"reduce1": (0.5, 0.25)}, {"reduce1": (8, 4)},
        metrics={"default": 0.5, "gmacs": 1e-3, "params": 10, "reduce1.h": 8, "expected_gmacs": 2e-3},
        **space_fields("cells", "after"), num_classes=10,
    )
    assert arch == {
        "schema_version": SCHEMA_VERSION, "input_size": [1, 16, 16], "choices": {"width": 8},
        "scales": {"reduce1": [0.5, 0.25]}, "sizes": {"reduce1": [8, 4]},
        "metrics": {"default": 0.5, "gmacs": 1e-3, "params": 10}, "space": "cells", "num_classes": 10,
    }
    assert tuple(arch["metrics"]) == METRICS
    assert "metrics" not in architecture_record((1, 16, 16), {}, {}, {})


def test_the_record_is_refused_where_loading_would_refuse_it(tmp_path):
    with pytest.raises(ValueError, match=r"scale of 'reduce1' must be two positive numbers"):
        architecture_record((1, 16, 16), {}, {"reduce1": (0.5, -1.0)}, {"reduce1": (8, 8)})
    with pytest.raises(KeyError, match="params"):
        architecture_record((1, 16, 16), {}, {}, {}, metrics={"default": 0.5, "gmacs": 1e-3})
    arch = architecture_record((1, 16, 16), {}, {}, {}, space="cells", placement="after")
    path = save_architecture(arch, tmp_path / "arch.json")
    assert load_architecture(path) == arch == json.loads(path.read_text())


def test_a_record_of_a_space_rebuilds_it():
    space = DynOPoolCellSpace(num_classes=10, in_chans=1, widths=(8,), depths=(1,))
    choices = {label: mutable.default() for label, mutable in space.simplify().items()}
    scales = {"reduce1": (0.5, 0.5), "reduce2": (0.5, 0.5)}
    arch = architecture_record((1, 16, 16), choices, scales, {"reduce1": (8, 8), "reduce2": (4, 4)})
    model = build_model(space, arch)
    assert {layer.name: layer.scale for _, layer in dynopool_layers(model)} == scales
    with pytest.raises(ValueError, match="differ from the exported"):
        build_model(space, architecture_record((1, 16, 16), choices, scales, {"reduce1": (8, 8), "reduce2": (8, 8)}))
