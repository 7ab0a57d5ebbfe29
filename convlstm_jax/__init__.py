"""convlstm_jax: ConvLSTM video classifiers in JAX/Flax, exact to Keras and faster."""
