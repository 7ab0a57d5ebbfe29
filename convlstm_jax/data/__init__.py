"""Frames, labels, clips and input pipelines. Knows nothing of models."""
