"""Frames, labels, clips and input pipelines. Knows nothing of models."""

from convlstm_jax.data.dataset import Split, load_splits

__all__ = ['Split', 'load_splits']
