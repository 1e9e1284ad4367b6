"""convergence: measured sampler convergence studies for diffusion image models."""

__version__ = "0.1.0"
