"""python -m convlstm_jax.keras_io: see convlstm_jax/keras_io/cli.py."""

import sys

from convlstm_jax.keras_io.cli import main

sys.exit(main())
