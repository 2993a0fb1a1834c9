"""Spiking networks with learnable synaptic delays (1-D DCLS, one tap per synapse).

Their training recipe (parameter groups, clamping, the ``SIG`` schedule) is :mod:`dcls_lib.recipe`,
shared with the image models.
"""

from .delays import SynapticDelays, delay_layers
from .lif import LIF, LeakyReadout, lif_dynamics, spike
from .model import DelaySNN, predict, readout_loss, readout_scores

__all__ = [
    "DelaySNN",
    "LIF",
    "LeakyReadout",
    "SynapticDelays",
    "delay_layers",
    "lif_dynamics",
    "predict",
    "readout_loss",
    "readout_scores",
    "spike",
]
