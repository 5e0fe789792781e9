"""openvision2: generative pretraining of vision encoders in JAX/Flax (see README.md)."""
