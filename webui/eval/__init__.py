"""Evaluation toolkit: the procedural "toy world" domain, an analyzer that reads
its images back, and DreamBooth-style fidelity metrics built on both."""
