"""An added sampler and an added X/Y/Z axis of the test pack."""

from diffusers import EulerDiscreteScheduler

from webui.extensions import api


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_sampler("Pack Euler", lambda config: EulerDiscreteScheduler.from_config(config))
    ext.add_xyz_axis("Pack CFG", lambda request, value: request.with_changes(cfg_scale=float(value)), kind="float")
