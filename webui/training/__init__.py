"""Training: datasets, the training loop, methods, and the files a finished run hands to users."""
