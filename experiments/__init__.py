"""Figure and study scripts over ntk_zoo (see experiments/README.md); run from the repo root."""
