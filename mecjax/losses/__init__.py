"""Pure loss functions of arrays: each docstring states its equation and shapes."""

from mecjax.losses.mec import adapt_lamda_scale
from mecjax.losses.mec import mec_logdet
from mecjax.losses.mec import mec_objective
from mecjax.losses.mec import mec_loss
from mecjax.losses.mec import mec_spectral_norm
from mecjax.losses.ablation import au_loss
from mecjax.losses.ablation import mmcr_loss
from mecjax.losses.ablation import vc_loss
from mecjax.losses.contrastive import infonce_loss
from mecjax.losses.entropy import e2mc_loss
from mecjax.losses.entropy import e2mc_terms
from mecjax.losses.entropy import m_spacings_entropy
from mecjax.losses.music import music_loss
from mecjax.losses.music import music_terms
from mecjax.losses.redundancy import barlow_twins_loss
from mecjax.losses.redundancy import vicreg_loss
from mecjax.losses.redundancy import vicreg_terms
from mecjax.losses.siamese import byol_loss
from mecjax.losses.siamese import simsiam_loss
from mecjax.losses.swav import sinkhorn
from mecjax.losses.swav import swav_loss

__all__ = [
    "mec_loss", "mec_logdet", "mec_objective", "mec_spectral_norm", "adapt_lamda_scale",
    "music_loss", "music_terms",
    "simsiam_loss", "byol_loss",
    "barlow_twins_loss", "vicreg_loss", "vicreg_terms",
    "sinkhorn", "swav_loss",
    "infonce_loss",
    "m_spacings_entropy", "e2mc_loss", "e2mc_terms",
    "vc_loss", "au_loss", "mmcr_loss",
]
