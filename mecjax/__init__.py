"""mecjax: information-maximisation self-supervised learning (MEC, E2MC, MUSIC) in JAX."""

__version__ = "0.1.0"
