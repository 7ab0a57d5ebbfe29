"""python -m convlstm_jax.evaluate: see convlstm_jax/evaluate/cli.py."""

import sys

from convlstm_jax.evaluate.cli import main

sys.exit(main())
