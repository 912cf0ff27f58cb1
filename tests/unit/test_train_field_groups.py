"""The Train tab's accordions: every group a method-dependent rule names exists and lists real methods, so no
accordion is hidden for every method by a typo (the Validation group once was)."""

from __future__ import annotations

from webui.training.config import METHODS
from webui.ui.train_fields import DATASET_GROUPS, GROUP_IDS, GROUP_METHODS, HYPERPARAMETER_GROUPS


def test_method_rules_name_existing_groups_and_real_methods():
    groups = {*DATASET_GROUPS, *HYPERPARAMETER_GROUPS}
    for group, methods in GROUP_METHODS.items():
        assert group in groups, group
        assert methods and all(method in METHODS for method in methods), (group, methods)


def test_every_method_shows_the_validation_and_saving_groups():
    for group in ("Validation", "Saving, samples and resume", "EMA"):
        assert group in GROUP_IDS
        assert all(method in GROUP_METHODS.get(group, METHODS) for method in METHODS), group
