"""Evaluation toolkit (not part of the product): the procedural "toy world" domain, an analyzer
that reads its images back, DreamBooth-style fidelity metrics built on both, and the reports in
``docs/FIDELITY*.md``."""
