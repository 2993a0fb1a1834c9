"""ThresholdGradCAM and StudyGradCAM keep pytorch-grad-cam's contract for its methods: shapes and batch
sizes, targets=None, several target layers, the context manager, aug_smooth, eigen_smooth, half
precision, a layer that runs twice in one forward, and 1-D and 3-D layers."""

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dcls_lib.cam import StudyCAM, StudyGradCAM, ThresholdGradCAM, resize_maps, weighted_channels
from dcls_lib.heatmaps import LayerTensors

METHODS = [ThresholdGradCAM, StudyGradCAM]


class Net(nn.Module):
    """conv(dim) -> conv(dim) -> global mean -> linear, for 1, 2 or 3 spatial dimensions."""

    def __init__(self, dim=2, classes=4):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.first = conv(3, 6, 3, stride=2, padding=1)
        self.second = conv(6, 5, 3, stride=2, padding=1)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        a = self.second(torch.relu(self.first(x)))
        return self.head(torch.relu(a).flatten(2).mean(2))


def net(dim=2, seed=0):
    torch.manual_seed(seed)
    return Net(dim).eval()


def inputs(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def run_recording(model, layer, x):
    """The model's logits and every output of ``layer`` in the forward pass (each keeps its gradient)."""
    calls = []

    def keep(module, inputs, output):
        output.retain_grad()
        calls.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        return model(x), calls
    finally:
        handle.remove()


def layer_tensors(model, layer, x, labels):
    """Activations and gradients of the labels' logits at ``layer``, by a full backward pass."""
    logits, calls = run_recording(model, layer, x)
    logits[torch.arange(len(labels)), torch.as_tensor(labels)].sum().backward()
    return calls[0].detach(), calls[0].grad


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes_batches_and_targets_none(method, batch):
    model = net()
    x = inputs(batch, 3, 40, 24)
    with method(model, [model.second]) as cam:
        maps = cam(x, None)
        predicted = model(x).argmax(1).tolist()
        explicit = cam(x, [ClassifierOutputTarget(c) for c in predicted])
    assert maps.shape == (batch, 40, 24) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, explicit)  # targets=None explains the predicted class


def test_several_layers_average_their_maps_and_hooks_are_released():
    model = net()
    x = inputs(2, 3, 32, 32)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    singles = []
    for layer in (model.first, model.second):
        with ThresholdGradCAM(model, [layer]) as cam:
            singles.append(cam(x, targets))
    with ThresholdGradCAM(model, [model.first, model.second]) as cam:
        both = cam(x, targets)
    np.testing.assert_allclose(both, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert not model.first._forward_hooks and not model.second._forward_hooks


def test_aug_smooth_gives_a_map_of_the_input_size():
    model = net()
    x = inputs(1, 3, 32, 32)
    with ThresholdGradCAM(model, [model.second]) as cam:
        plain = cam(x, [ClassifierOutputTarget(0)])
        smooth = cam(x, [ClassifierOutputTarget(0)], aug_smooth=True)
    assert smooth.shape == plain.shape and not np.allclose(smooth, plain)
    assert smooth.min() >= 0.3 - 1e-6 and smooth.max() <= 1 + 1e-6


def principal_projection(terms):
    """First principal component of the channel vectors at each cell, written here with torch."""
    out = []
    for t in terms:  # (C, *spatial)
        cells = t.reshape(t.shape[0], -1).T.double()  # (cells, C)
        cells = cells - cells.mean(0)
        _, _, vh = torch.linalg.svd(cells, full_matrices=False)
        out.append((cells @ vh[0]).reshape(t.shape[1:]))
    return torch.stack(out).float()


def test_eigen_smooth_projects_the_weighted_channels():
    model = net()
    x = inputs(2, 3, 16, 16)
    labels = [0, 3]
    a, g = layer_tensors(model, model.second, x, labels)  # (2, 5, 4, 4)
    projection = principal_projection(weighted_channels(a, g))
    targets = [ClassifierOutputTarget(c) for c in labels]
    with ThresholdGradCAM(model, [model.second]) as cam:
        thresholded = cam(x, targets, eigen_smooth=True)
        unsmoothed = cam(x, targets)
    with StudyGradCAM(model, [model.second]) as cam:
        plain = cam(x, targets, eigen_smooth=True)
    for i in range(2):  # a principal component's sign is arbitrary
        candidates = []
        for sign in (1, -1):
            p = sign * projection[i]
            normalised = ((p - p.min()) / (p.max() - p.min())).clamp_min(0.3)
            candidates.append((resize_maps(normalised[None], (16, 16))[0], resize_maps(torch.relu(p)[None], (16, 16))[0]))
        assert any(
            np.allclose(thresholded[i], t.numpy(), atol=1e-4) and np.allclose(plain[i], r.numpy(), atol=1e-5)
            for t, r in candidates
        )
    assert not np.allclose(thresholded, unsmoothed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype):
    model = net()
    x = inputs(2, 3, 32, 32)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(0)]
    with ThresholdGradCAM(model, [model.second]) as cam:
        full = cam(x, targets)
    model = model.to(dtype)
    with ThresholdGradCAM(model, [model.second]) as cam:
        half = cam(x.to(dtype), targets)
    assert half.dtype == np.float32 and half.shape == full.shape
    np.testing.assert_allclose(half, full, atol=0.08)


def test_a_layer_that_runs_twice_uses_its_first_call_like_gradcam():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    layer = model.layer4[-1].relu  # torchvision's BasicBlock applies its one ReLU twice
    x = inputs(2, 3, 64, 64)
    labels = [1, 4]
    targets = [ClassifierOutputTarget(c) for c in labels]
    with StudyGradCAM(model, [layer]) as cam:
        ours = cam(x, targets)
    with GradCAM(model, [layer]) as cam:
        theirs = cam(x, targets)
    logits, calls = run_recording(model, layer, x)
    logits[torch.arange(2), torch.tensor(labels)].sum().backward()
    assert len(calls) == 2
    first = torch.relu(weighted_channels(calls[0].detach(), calls[0].grad).mean(1))
    expected = torch.nn.functional.interpolate(first[:, None], size=(64, 64), mode="bilinear", antialias=True)[:, 0]
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-6)
    # pytorch-grad-cam's map is a positive affine image of the study's (sum, min-max): equal after normalising
    normalise = lambda m: (m - m.min((1, 2), keepdims=True)) / np.ptp(m, (1, 2), keepdims=True)  # noqa: E731
    np.testing.assert_allclose(normalise(ours), theirs, atol=2e-2)


@pytest.mark.parametrize("dim, shape", [(1, (2, 3, 40)), (3, (2, 3, 12, 16, 8))])
def test_time_series_and_volumes(dim, shape):
    model = net(dim)
    x = inputs(*shape)
    labels = [2, 0]
    targets = [ClassifierOutputTarget(c) for c in labels]
    a, g = layer_tensors(model, model.second, x, labels)
    terms = weighted_channels(a, g)
    with ThresholdGradCAM(model, [model.second]) as cam:
        maps = cam(x, targets)
    with StudyGradCAM(model, [model.second]) as cam:
        plain = cam(x, targets)
    assert maps.shape == plain.shape == (2, *shape[2:])
    fast = StudyCAM(model, model.second, explainer="gradcam")(x, torch.tensor(labels))
    np.testing.assert_allclose(fast.numpy(), plain, atol=1e-6)
    # at the layer's own resolution the map is the definition, cell by cell
    cells = torch.relu(terms).mean(1)
    low = cells.flatten(1).min(1).values.view(-1, *[1] * dim)
    high = cells.flatten(1).max(1).values.view(-1, *[1] * dim)
    expected = ((cells - low) / (high - low)).clamp_min(0.3)
    got = StudyCAM(model, model.second)(x, torch.tensor(labels), size=tuple(a.shape[2:]))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert maps.min() >= 0.3 - 1e-6 and maps.max() <= 1 + 1e-6


def test_layer_of_another_rank_than_the_input_is_refused():
    model = net(1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*reshape_transform"):
        StudyCAM(model, model.second)(inputs(1, 3, 40), torch.tensor([0]), size=(40, 40))


def test_layer_tensors_uses_the_same_weighted_channels():
    a, g = inputs(2, 4, 3, 3, seed=2), inputs(2, 4, 3, 3, seed=3)
    torch.testing.assert_close(LayerTensors(a, g).weighted_channels(), g.mean((2, 3), keepdim=True) * a)
