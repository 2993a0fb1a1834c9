"""torch.autograd.gradcheck in float64 for the input, weight, P and SIG of every version and dimension.

The bilinear and triangle profiles have kinks at integer distances; positions and widths are drawn
so that no cell sits on a kink, where a finite difference would not be a derivative.
"""

import pytest
import torch

from dcls_lib import Dcls1d, Dcls2d, Dcls3d, construct_kernel

LAYERS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}


def _away_from_kinks(shape, limit, generator):
    """Offsets whose fractional part lies in [0.55, 0.75]: never an integer, never integer +- 0.05..0.15."""
    whole = torch.randint(-limit, limit, shape, generator=generator).double()
    return whole + 0.55 + 0.2 * torch.rand(shape, generator=generator, dtype=torch.float64)


def _widths(shape, generator):
    """SIG with |SIG| in [0.05, 0.15] (fractional widths that keep kinks off the grid), both signs."""
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).double()
    return sign * (0.05 + 0.1 * torch.rand(shape, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("version", ["gauss", "v1", "max", "v0"])
def test_gradcheck_layer(ndim, version):
    g = torch.Generator().manual_seed(ndim * 10 + len(version))
    sizes = (5, 4, 3)[:ndim]
    layer = LAYERS[ndim](2, 4, kernel_count=3, dilated_kernel_size=sizes, padding=1, groups=2, version=version)
    layer = layer.double()
    with torch.no_grad():
        layer.P.copy_(_away_from_kinks(layer.P.shape, 2, g) - 0.5)
        if layer.SIG is not None:
            layer.SIG.copy_(_widths(layer.SIG.shape, g))
    x = torch.randn(1, 2, *(6,) * ndim, dtype=torch.float64, generator=g, requires_grad=True)

    params = [layer.weight, layer.P] + ([layer.SIG] if layer.SIG is not None else [])

    def run(x, weight, P, *sig):
        kernel = construct_kernel(weight, P, sig[0] if sig else None, layer.dilated_kernel_size, version)
        return layer._conv(x, kernel)

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_chunked_construction(monkeypatch):
    """Large layers are built in chunks of filters: the chunked path has the same derivatives."""
    import dcls_lib.layers.kernel as kernel_module

    monkeypatch.setattr(kernel_module, "CHUNK_ELEMENTS", 1)  # one filter per chunk
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    P = (_away_from_kinks((2, 3, 2, 4), 2, g) - 0.5).requires_grad_()
    SIG = _widths((2, 3, 2, 4), g).requires_grad_()
    for version, sig in (("gauss", SIG), ("max", SIG), ("v1", None), ("v0", None)):
        inputs = (weight, P) + ((sig,) if sig is not None else ())

        def build(w, p, *s):
            return construct_kernel(w, p, s[0] if s else None, (5, 6), version)

        assert torch.autograd.gradcheck(build, inputs, eps=1e-6, atol=1e-7, rtol=1e-5), version
