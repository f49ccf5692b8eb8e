"""cxr_jax: explaining chest X-ray classifiers in JAX."""

__version__ = "0.1.0"
