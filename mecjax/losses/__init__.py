"""Pure loss functions of arrays: each docstring states its equation and shapes."""

from mecjax.losses.mec import mec_logdet
from mecjax.losses.mec import mec_loss
from mecjax.losses.mec import mec_spectral_norm

__all__ = ["mec_loss", "mec_logdet", "mec_spectral_norm"]
