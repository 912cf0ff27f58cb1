"""How the embedded default model (``models/default/sd-studio-toy``) was trained: the caption
generator, the training loop and the VAE decoder fine-tune. Run on the GPU machine through
``bench/*_on_device.sh``; the product never imports this package."""
