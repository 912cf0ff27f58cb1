"""The Train tab's GPUs choice: only the CUDA devices that exist, one by default, and the config it makes."""

from __future__ import annotations

import pytest

from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.launcher import check_gpus, uses_several_processes
from webui.ui.train_fields import all_specs, config_from_widgets, gpu_widget, widget_value

GPUS = next(spec for spec in all_specs() if spec.name == "gpus")


@pytest.mark.parametrize("available, choices, ticked, visible", [
    (0, [], [], False),                         # CPU: hidden, training runs on the app's device
    (1, [("GPU 0", "0")], ["0"], True),           # one device: shown and ticked
    (2, [("GPU 0", "0"), ("GPU 1", "1")], ["0"], True),  # several: the first by default
])
def test_the_widget_offers_the_devices_that_exist(available, choices, ticked, visible):
    widget = gpu_widget(GPUS, "", available)
    assert [tuple(choice) for choice in widget.choices] == choices
    assert widget.value == ticked and widget.visible == visible


def test_ticked_gpus_become_the_config_and_back():
    config = config_from_widgets({"gpus": ["0", "1"]})
    assert config.gpus == "0,1" and config.gpu_ids == (0, 1) and uses_several_processes(config)
    assert widget_value(GPUS, config.gpus) == ["0", "1"]
    assert not uses_several_processes(config_from_widgets({"gpus": ["1"]}))


def test_more_gpus_than_exist_are_refused_with_the_ones_that_do():
    check_gpus(TrainingConfig(gpus="0,1"), 2)
    with pytest.raises(TrainingConfigError, match="gpus: GPU 2 does not exist: this machine has GPUs 0, 1"):
        check_gpus(TrainingConfig(gpus="0,2"), 2)
    with pytest.raises(TrainingConfigError, match="GPU 0, 1 does not exist: this machine has no CUDA GPU"):
        check_gpus(TrainingConfig(gpus="0,1"), 0)
