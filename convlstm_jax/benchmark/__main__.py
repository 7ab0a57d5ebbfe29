"""`python -m convlstm_jax.benchmark`: see the package's docstring and `--help`."""

from convlstm_jax.benchmark.cli import main

main()
