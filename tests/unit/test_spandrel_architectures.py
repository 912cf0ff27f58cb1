"""spandrel without torchvision: the upscaler architectures load, the two that need torchvision are reported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from webui.upscaling.spandrel_architectures import load_architectures, registry_order


@pytest.fixture(scope="module")
def architectures():
    return load_architectures()


def test_the_registry_order_is_read_from_spandrels_own_source():
    package_dir = Path(importlib.util.find_spec("spandrel").submodule_search_locations[0])
    order = registry_order(package_dir)
    modules = [module for module, _ in order]
    assert len(order) >= 40 and len(set(modules)) == len(modules)
    assert ("ESRGAN", "ESRGANArch") in order and ("Compact", "CompactArch") in order
    # spandrel lists Compact before ESRGAN: that order decides which architecture claims a state dict first.
    assert modules.index("Compact") < modules.index("ESRGAN")


def test_upscaler_architectures_load_and_only_torchvision_users_are_missing(architectures):
    names = {str(support.architecture.id) for support in architectures.registry}
    assert {"ESRGAN", "Compact", "SwinIR", "DAT"} <= names, sorted(names)
    if importlib.util.find_spec("torchvision") is None:
        assert set(architectures.unavailable) == {"LaMa", "RestoreFormer"}
        assert all("torchvision" in reason for reason in architectures.unavailable.values())


def test_a_tiny_rrdb_state_dict_is_detected_with_its_scale(architectures):
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    model = RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    descriptor = architectures.load(model.state_dict())
    assert descriptor.architecture.name == "ESRGAN" and descriptor.scale == 2
    with torch.no_grad():
        assert tuple(descriptor(torch.rand(1, 3, 16, 12)).shape) == (1, 3, 32, 24)


def test_a_state_dict_no_architecture_claims_is_spandrels_unsupported_error(architectures):
    with pytest.raises(architectures.unsupported_error):
        architectures.load({"some.weight": torch.zeros(3, 3)})
