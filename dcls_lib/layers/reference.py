"""Reading positions saved by the reference library (``dcls`` 0.1.1) into this library's convention.

The reference moves ``P[i]`` along different spatial axes depending on the version and dimension,
and centres ``P[i]`` with the size of axis ``i`` even when it moves it along another axis (so its
non-square kernels are shifted).  Measured on the reference: the tap index ``i`` it moves along our
axis ``d`` is ``_REFERENCE_INDEX[(ndim, family)][d]``, and it sits at ``P[i] + size[i] // 2`` there.
Converting therefore permutes ``P`` and ``SIG`` and shifts ``P`` by ``size[i] // 2 - size[d] // 2``,
which reproduces the reference's outputs exactly for square and non-square kernels.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch

from .interpolation import get_interpolation

_REFERENCE_INDEX = {
    (1, "v0"): (0,),
    (1, "other"): (0,),
    (2, "v0"): (0, 1),
    (2, "other"): (1, 0),
    (3, "v0"): (0, 2, 1),
    (3, "other"): (2, 1, 0),
}


def reference_axis_order(version: str, ndim: int) -> tuple[int, ...]:
    """For each of our spatial axes, the index of the reference's ``P`` that moves taps along it."""
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    family = "v0" if get_interpolation(version).name == "v0" else "other"
    return _REFERENCE_INDEX[(ndim, family)]


def _is_position_key(key: str, name: str) -> bool:
    return key == name or key.endswith("." + name)


def convert_reference_positions(
    P: torch.Tensor, version: str, dilated_kernel_size: Optional[Sequence[int]] = None, sigma: bool = False
) -> torch.Tensor:
    """One reference ``P`` (or ``SIG`` with ``sigma=True``) tensor in this library's convention."""
    ndim = P.shape[0]
    order = reference_axis_order(version, ndim)
    out = P[list(order)].clone()
    if not sigma and dilated_kernel_size is not None:
        sizes = tuple(dilated_kernel_size)
        if len(sizes) != ndim:
            raise ValueError(f"dilated_kernel_size must have {ndim} entries, got {sizes}")
        for d, i in enumerate(order):
            out[d] += sizes[i] // 2 - sizes[d] // 2
    return out


def from_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    version: str,
    ndim: int,
    dilated_kernel_size: Union[int, Sequence[int], None] = None,
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with every ``P`` and ``SIG`` entry moved to this library's convention.

    Keys named ``P``/``SIG`` or ending in ``.P``/``.SIG`` whose first dimension is ``ndim`` are
    converted; everything else is passed through.  ``dilated_kernel_size`` is only needed for
    non-square kernels, whose reference positions are also shifted.
    """
    if isinstance(dilated_kernel_size, int):
        dilated_kernel_size = (dilated_kernel_size,) * ndim
    reference_axis_order(version, ndim)  # validates version and ndim up front
    converted = {}
    for key, value in state_dict.items():
        is_p, is_sig = _is_position_key(key, "P"), _is_position_key(key, "SIG")
        if (is_p or is_sig) and value.dim() >= 1 and value.shape[0] == ndim:
            value = convert_reference_positions(value, version, dilated_kernel_size, sigma=is_sig)
        converted[key] = value
    return converted
