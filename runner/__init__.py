"""divrun: a config-driven experiment runner for optimizer, divergence-loss and schedule research."""
__version__ = "0.1.0"
