"""A feed-forward spiking network with synaptic delays, as in the published delay models.

Each layer is ``SynapticDelays -> BatchNorm -> LIF -> Dropout``; the output layer is
``SynapticDelays -> LeakyReadout`` and its membrane potential over time is the output.  The three
kinds of synapses compared in the book:

* ``"learned"``: DCLS delays learned with the recipe;
* ``"none"``: no delays (``max_delay = 1``: a linear layer at every time step);
* ``"random"``: fixed random integer delays in the same range, not learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import check_choice, check_positive_int
from .delays import SynapticDelays
from .lif import LIF, LeakyReadout

DELAY_KINDS = ("learned", "none", "random")


class DelaySNN(nn.Module):
    """Spiking classifier over ``(batch, n_inputs, time)`` inputs; returns ``(batch, n_outputs, time)``
    output potentials (see ``readout_scores`` for class scores)."""

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        n_hidden: int = 64,
        n_hidden_layers: int = 1,
        max_delay: int = 16,
        delays: str = "learned",
        tau: float = 1.0,
        readout_tau: float = 1.0,
        dropout: float = 0.0,
        batchnorm: bool = True,
        version: str = "gauss",
        tail: int = 0,
    ) -> None:
        super().__init__()
        check_choice("delays", delays, DELAY_KINDS)
        check_positive_int(n_hidden_layers=n_hidden_layers)
        self.delay_kind = delays
        span = 1 if delays == "none" else max_delay

        def synapses(n_in: int, n_out: int) -> SynapticDelays:
            return SynapticDelays(
                n_in, n_out, span, version=version, learn_delays=delays == "learned", tail=tail if span > 1 else 0
            )

        layers: list[nn.Module] = []
        width = n_inputs
        for _ in range(n_hidden_layers):
            layers.append(synapses(width, n_hidden))
            if batchnorm:
                layers.append(nn.BatchNorm1d(n_hidden))
            layers.append(LIF(tau))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = n_hidden
        layers += [synapses(width, n_outputs), LeakyReadout(readout_tau)]
        self.layers = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        return self.layers(input)

    def hidden_spikes(self, input: Tensor) -> list[Tensor]:
        """The spikes of every hidden layer, for plots."""
        out, x = [], input
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, LIF):
                out.append(x)
        return out


def readout_scores(potentials: Tensor) -> Tensor:
    """Class scores ``(batch, classes)``: the softmax over classes summed over time (the published
    ``"sum"`` readout), fed to a cross-entropy loss."""
    return F.softmax(potentials, dim=1).sum(-1)


def readout_loss(potentials: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(readout_scores(potentials), target)


@torch.no_grad()
def predict(potentials: Tensor) -> Tensor:
    return readout_scores(potentials).argmax(1)
