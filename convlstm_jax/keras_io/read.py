"""Any supported Keras checkpoint, by what the path holds: a SavedModel directory, a zip or an HDF5 file."""

from __future__ import annotations

import pathlib
import zipfile

import h5py

from convlstm_jax.keras_io import keras2, keras3, savedmodel
from convlstm_jax.keras_io.kerasfile import KerasFile


def read_keras(path: str | pathlib.Path) -> KerasFile:
    """Reads any supported Keras checkpoint."""
    path = pathlib.Path(path)
    if path.is_dir():
        if not (path / 'saved_model.pb').is_file():
            raise ValueError(f'{path} is a directory but not a SavedModel (no saved_model.pb)')
        return savedmodel.read_savedmodel(path)
    if not path.is_file():
        raise FileNotFoundError(f'Keras checkpoint {path} does not exist')
    if zipfile.is_zipfile(path):
        return keras3.read_archive(path)
    if h5py.is_hdf5(path):
        with h5py.File(path, 'r') as f:
            if 'layers' in f and 'layer_names' not in f.attrs and 'model_weights' not in f:
                return keras3.read_weights_h5(f, str(path))
            return keras2.read_h5(f, str(path))
    raise ValueError(
        f'{path}: not a SavedModel directory, a .keras archive or an HDF5 file (.h5 / .weights.h5)'
    )
