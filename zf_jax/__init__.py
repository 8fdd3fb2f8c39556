"""zf_jax: Zeiler & Fergus (2013), "Visualizing and Understanding Convolutional Networks", in JAX."""
from zf_jax import deconv, layers, models

__all__ = ["deconv", "layers", "models"]
__version__ = "0.1.0"
