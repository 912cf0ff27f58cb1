"""SD Studio: an Automatic1111-style Stable Diffusion web UI built on diffusers."""

__version__ = "0.1.0"
