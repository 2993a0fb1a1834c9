"""How kernels are applied: the FFT path and kernel cropping against F.convNd, denormals, no sync, oneDNN."""

import random

import pytest
import torch
import torch.nn.functional as F

import dcls_lib.layers.convolve as convolve_module
import dcls_lib.layers.kernel as kernel_module
from dcls_lib import Dcls2d, Dcls3d, construct_kernel
from dcls_lib.layers.convolve import convolve, crop_to_reach, uses_fft
from dcls_lib.layers.fft_conv import DepthwiseFFTConv, depthwise_fft_conv, fft_size

CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _reference(input, kernel, bias, stride, pads, groups):
    """F.convNd on an explicitly zero-padded input."""
    nd = kernel.dim() - 2
    padded = F.pad(input, [p for pair in reversed(pads) for p in pair])
    return CONVS[nd](padded, kernel, bias, stride, 0, 1, groups)


def _grads(fn, input, kernel, bias, grad_seed=0):
    out = fn()
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    wrt = [t for t in (input, kernel, bias) if t is not None]
    return (out, *torch.autograd.grad(out, wrt, g))


def _random_case(rng: random.Random, nd: int, depthwise: bool):
    channels = rng.choice([1, 2, 3])
    multiplier = rng.choice([1, 2])
    groups = channels if depthwise else rng.choice([1, channels])
    in_ch, out_ch = channels, channels * multiplier
    ksize = [rng.randint(1, 7) for _ in range(nd)]
    size = [rng.randint(1, 9) for _ in range(nd)]
    pads = [(rng.randint(0, 4), rng.randint(0, 4)) for _ in range(nd)]
    size = [max(s, k - left - right) for s, k, (left, right) in zip(size, ksize, pads)]  # at least one output
    stride = [1] * nd if depthwise else [rng.choice([1, 2]) for _ in range(nd)]
    batch = rng.choice([1, 2])
    return batch, in_ch, out_ch, groups, ksize, size, pads, stride


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_fft_convolution_equals_conv_forward_and_backward(nd):
    rng = random.Random(nd)
    for _ in range(6):
        batch, in_ch, out_ch, groups, ksize, size, pads, stride = _random_case(rng, nd, depthwise=True)
        x = torch.randn(batch, in_ch, *size, dtype=torch.float64, requires_grad=True)
        k = torch.randn(out_ch, 1, *ksize, dtype=torch.float64, requires_grad=True)
        ours = _grads(lambda: depthwise_fft_conv(x, k, pads), x, k, None)
        ref = _grads(lambda: _reference(x, k, None, stride, pads, in_ch), x, k, None)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_convolve_equals_conv_on_random_cases(nd, monkeypatch):
    """Cropping, asymmetric pads, strides, groups and (2-D, forced by a threshold of 1 cell) the FFT path."""
    monkeypatch.setattr(convolve_module, "FFT_MIN_CELLS", 1)
    rng = random.Random(10 + nd)
    took_fft = 0
    for case in range(10):
        batch, in_ch, out_ch, groups, ksize, size, pads, stride = _random_case(rng, nd, depthwise=case % 2 == 0)
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            x = torch.randn(batch, in_ch, *size, dtype=dtype, requires_grad=True)
            k = torch.randn(out_ch, in_ch // groups, *ksize, dtype=dtype, requires_grad=True)
            b = torch.randn(out_ch, dtype=dtype, requires_grad=True)
            ours = _grads(lambda: convolve(x, k, b, stride, pads, groups), x, k, b)
            ref = _grads(lambda: _reference(x, k, b, stride, pads, groups), x, k, b)
            for a, r in zip(ours, ref):
                torch.testing.assert_close(a, r, rtol=tol, atol=tol)
        cropped, _ = crop_to_reach(k, size, stride, pads)
        took_fft += uses_fft(x, cropped, stride, groups)
    assert took_fft > 0 or nd != 2


def test_unbatched_bfloat16_and_channels_last_inputs(monkeypatch):
    monkeypatch.setattr(convolve_module, "FFT_MIN_CELLS", 1)
    x = torch.randn(3, 9, 8)
    k = torch.randn(3, 1, 4, 5)
    pads = [(1, 2), (2, 2)]
    torch.testing.assert_close(convolve(x, k, None, (1, 1), pads, 3), _reference(x[None], k, None, (1, 1), pads, 3)[0])
    xb, kb = x[None].bfloat16(), k.bfloat16()  # no bfloat16 FFT on the CPU: the plain convolution, exactly
    assert not uses_fft(xb, kb, (1, 1), 3)
    assert torch.equal(convolve(xb, kb, None, (1, 1), pads, 3), _reference(xb, kb, None, (1, 1), pads, 3))
    xc = x[None].contiguous(memory_format=torch.channels_last)
    out = convolve(xc, k, None, (1, 1), pads, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, _reference(x[None], k, None, (1, 1), pads, 3))


def test_a_kernel_larger_than_the_input_is_cropped_to_what_reaches_it():
    k = torch.randn(4, 1, 17, 17)
    cropped, pads = crop_to_reach(k, (7, 7), (1, 1), [(8, 8), (8, 8)])
    assert cropped.shape[-2:] == (13, 13) and pads == [(6, 6), (6, 6)]
    assert torch.equal(cropped, k[..., 2:15, 2:15])
    same, same_pads = crop_to_reach(k, (20, 20), (1, 1), [(8, 8), (8, 8)])
    assert same is k and same_pads == [(8, 8), (8, 8)]


def test_gradcheck_of_the_fft_path_and_the_onednn_free_conv3d():
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: DepthwiseFFTConv.apply(a, b, ((1, 2), (0, 3))), (x, k))
    x3 = torch.randn(1, 2, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    k3 = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: convolve_module._Conv3dWithoutOneDNN.apply(a, b, (2, 2, 2), 1), (x3, k3)
    )


def test_fft_sizes_have_only_small_prime_factors():
    assert [fft_size(n) for n in (1, 7, 11, 13, 62, 64, 97)] == [1, 8, 12, 15, 64, 64, 100]


def test_the_layer_takes_the_fft_path_and_matches_the_plain_convolution(monkeypatch):
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, 6, dilated_kernel_size=13, padding=6, groups=4, version="gauss").double()
    x = torch.randn(2, 4, 10, 11, dtype=torch.float64, requires_grad=True)
    assert uses_fft(x, layer.construct_kernel(), layer.stride, layer.groups)
    fast = _grads(lambda: layer(x), x, layer.P, None)
    fast_params = torch.autograd.grad(layer(x).sum(), [layer.weight, layer.P, layer.SIG])
    monkeypatch.setattr(convolve_module, "FFT_MIN_CELLS", 10**9)
    plain = _grads(lambda: layer(x), x, layer.P, None)
    plain_params = torch.autograd.grad(layer(x).sum(), [layer.weight, layer.P, layer.SIG])
    for a, b in zip(fast + fast_params, plain + plain_params):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    dense = layer.to_dense()
    torch.testing.assert_close(dense(x), plain[0], rtol=1e-9, atol=1e-10)


def test_the_fft_path_under_torch_compile(monkeypatch):
    monkeypatch.setattr(convolve_module, "FFT_MIN_CELLS", 1)
    torch.manual_seed(0)
    layer = Dcls2d(3, 3, 4, dilated_kernel_size=5, padding="same", groups=3)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert layer.P.grad is not None and torch.isfinite(layer.P.grad).all()


def test_kernels_hold_no_denormals_and_parameter_gradients_do_not_change(monkeypatch):
    torch.manual_seed(0)
    layer = Dcls2d(96, 96, 34, dilated_kernel_size=17, padding=8, groups=96, version="gauss")
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        params = [p.detach().to(dtype).requires_grad_() for p in (layer.weight, layer.P, layer.SIG)]
        kernel = construct_kernel(*params[:2], params[2], (17, 17), "gauss")
        tiny = torch.finfo(dtype).tiny
        assert not ((kernel != 0) & (kernel.abs() < tiny)).any(), dtype
        if dtype == torch.float32:
            grad = torch.randn_like(kernel)
            flushed = torch.autograd.grad(kernel, params, grad)
            monkeypatch.setattr(kernel_module, "flush_denormals_", lambda k: k)
            raw = construct_kernel(*params[:2], params[2], (17, 17), "gauss")
            assert ((raw != 0) & (raw.abs() < tiny)).sum() > 1000  # what the flush removes
            torch.testing.assert_close(kernel, raw, rtol=0, atol=tiny)
            for a, b in zip(flushed, torch.autograd.grad(raw, params, grad)):
                assert torch.equal(a, b)
            monkeypatch.undo()


def test_forward_runs_on_the_meta_device_without_synchronising():
    layer = Dcls2d(4, 8, 3, dilated_kernel_size=7, padding=3, groups=2).to("meta")
    assert layer(torch.empty(2, 4, 9, 10, device="meta")).shape == (2, 8, 9, 10)
    built = Dcls3d(2, 2, 3, dilated_kernel_size=3, stride=2, device="meta")
    assert built(torch.empty(1, 2, 5, 5, 5, device="meta")).shape == (1, 2, 2, 2, 2)
    layer = Dcls2d(2, 2, 3, dilated_kernel_size=5)
    with torch.no_grad():
        layer.P[0, 0, 0, 0] = float("nan")
    layer(torch.randn(1, 2, 6, 6))  # forward does not check (that would synchronise); clamping does
    with pytest.raises(ValueError, match="parameter P has non-finite"):
        layer.clamp_parameters()


def test_dcls3d_avoids_onednns_broken_conv3d_weight_gradient():
    """torch 2.14's oneDNN float32 conv3d weight gradient is garbage for this case (right in float64)."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 7, 8, 9, dtype=torch.float64)
    k = torch.randn(2, 2, 7, 7, 7, dtype=torch.float64, requires_grad=True)
    (reference,) = torch.autograd.grad(F.conv3d(x, k, None, 2, 3).sum(), k)
    k32 = k.detach().float().requires_grad_()
    (ours,) = torch.autograd.grad(convolve(x.float(), k32, None, (2, 2, 2), [(3, 3)] * 3, 1).sum(), k32)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-3)
    layer = Dcls3d(2, 2, 5, dilated_kernel_size=7, stride=2, padding=3)
    layer(x.float()).sum().backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().max() < 1e4
    (plain,) = torch.autograd.grad(F.conv3d(x.float(), k32, None, 2, 3).sum(), k32)
    if torch.allclose(plain.double(), reference, rtol=1e-4, atol=1e-3):
        pytest.skip("oneDNN's conv3d weight gradient is right here: convolve._avoids_onednn may be removable")


def test_channels_last_inference_takes_the_direct_convolution_and_training_the_fft():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 20, 21).contiguous(memory_format=torch.channels_last)
    k = torch.randn(6, 1, 17, 17)
    pads = [(8, 8), (8, 8)]
    reference = _reference(x, k, None, (1, 1), pads, 6)
    with torch.no_grad():
        assert not uses_fft(x, k, (1, 1), 6)
        out = convolve(x, k, None, (1, 1), pads, 6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    assert uses_fft(x.contiguous(), k, (1, 1), 6)  # the default format keeps the FFT without gradients too
    assert not uses_fft(x, k, (1, 1), 6) and uses_fft(x, k.requires_grad_(), (1, 1), 6)
    with torch.no_grad():
        assert not uses_fft(x, k, (1, 1), 6)  # grad mode off: nothing is recorded


def _cached(layer):
    return None if layer._inference_kernel is None else layer._inference_kernel[1]


def test_inference_reuses_the_kernel_until_a_parameter_changes():
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, 5, dilated_kernel_size=9, padding=4, groups=2).eval()
    x = torch.randn(2, 4, 11, 11)

    def infer():
        xt = x.to(layer.weight.dtype)
        with torch.no_grad():
            out = layer(xt)
        kernel = layer.construct_kernel()
        torch.testing.assert_close(out, _reference(xt, kernel, layer.bias, (1, 1), [(4, 4)] * 2, 2))
        return _cached(layer)

    def optimiser_step():
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        torch.optim.SGD(layer.parameters(), lr=0.1).step()

    first = infer()
    assert first is not None and infer() is first
    changes = {
        "an optimiser step": optimiser_step,
        "load_state_dict": lambda: layer.load_state_dict({k: v + 0.3 for k, v in layer.state_dict().items()}),
        "nn.init": lambda: torch.nn.init.normal_(layer.P, 0, 1),
        "clamp_parameters": layer.clamp_parameters,
        "a dtype conversion": layer.double,
    }
    for name, change in changes.items():
        before = infer()
        change()
        assert infer() is not before, f"{name} left the cached kernel in place"
    layer.train()
    with torch.no_grad():
        layer(x.double())
    assert _cached(layer) is None  # train mode builds anew (and drops the cache)
    layer.eval()
    layer(x.double()).sum().backward()  # gradients reach the parameters: never from a cache
    assert _cached(layer) is None and layer.P.grad is not None


def test_compiled_inference_builds_the_kernel_from_the_current_parameters():
    torch.manual_seed(0)
    layer = Dcls2d(3, 3, 4, dilated_kernel_size=7, padding="same", groups=3).eval()
    compiled = torch.compile(layer, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = compiled(x)
        torch.testing.assert_close(before, layer(x), rtol=1e-5, atol=1e-5)
        layer.P.add_(1.5)
        layer.clamp_parameters()
        after = compiled(x)
        torch.testing.assert_close(after, layer(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
