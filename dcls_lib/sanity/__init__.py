"""Checks that a heatmap depends on the model, beside its alignment with human maps.

- :mod:`.randomisation`: the model-parameter randomisation test (Adebayo et al. 2018).
- :mod:`.faithfulness`: ROAD (Rong et al. 2022) through pytorch-grad-cam's own metrics.
- :mod:`.report`: alignment, randomisation and ROAD side by side, with model-independent reference
  maps, to show which check catches what.
- :mod:`.spread`: the mean, spread and bootstrap interval every row reports.
"""

from .randomisation import (
    MODES,
    ParameterCounts,
    RandomisationResult,
    RandomisationSettings,
    parameter_counts,
    parameter_randomisation,
    randomisation_layers,
    randomise_,
    randomised_copy,
)
from .faithfulness import PERCENTILES, RoadResult, rank_maps, road
from .report import SanityReport, image_edges, sanity_report
from .spread import spread_text, summarise

__all__ = [
    "MODES",
    "PERCENTILES",
    "ParameterCounts",
    "RandomisationResult",
    "RandomisationSettings",
    "RoadResult",
    "SanityReport",
    "image_edges",
    "parameter_counts",
    "parameter_randomisation",
    "randomisation_layers",
    "randomise_",
    "randomised_copy",
    "rank_maps",
    "road",
    "sanity_report",
    "spread_text",
    "summarise",
]
