"""Spiking networks with learnable synaptic delays (1-D DCLS, one tap per synapse)."""

from .delays import (
    SigmaSchedule,
    SynapticDelays,
    clamp_delays,
    delay_layers,
    delay_param_groups,
    set_sigma,
)
from .lif import LIF, LeakyReadout, lif_dynamics, spike
from .model import DelaySNN, predict, readout_loss, readout_scores

__all__ = [
    "DelaySNN",
    "LIF",
    "LeakyReadout",
    "SigmaSchedule",
    "SynapticDelays",
    "clamp_delays",
    "delay_layers",
    "delay_param_groups",
    "lif_dynamics",
    "predict",
    "readout_loss",
    "readout_scores",
    "set_sigma",
    "spike",
]
