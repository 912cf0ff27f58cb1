"""How the shipped toy upscaler (``models/default/upscalers/2x-SDStudio-ToyCompact.safetensors``) was made and
is measured: toy-world training pairs, image quality metrics, the training script. The product never imports
this package; ``bench/upscaler_quality.py`` and the unit tests do."""
