"""Threshold-Grad-CAM and the study's Grad-CAM against a direct hand computation of their definitions."""

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from dcls_lib.cam import StudyCAM, StudyGradCAM, ThresholdGradCAM, explain
from dcls_lib.metrics import spearman


class Tiny(nn.Module):
    """conv -> target conv -> ReLU -> global mean -> linear: gradients at the target vary in space."""

    def __init__(self, classes=5, channels=6):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.target = nn.Conv2d(8, channels, 3, stride=2, padding=1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        a = self.target(torch.relu(self.stem(x)))
        return self.head(torch.relu(a).mean((2, 3)))


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw).eval()


def hand_maps(model, x, labels, threshold=None):
    """The study's definitions, written out per image with a full backward pass and numpy."""
    saved = {}

    def keep(module, inputs, output):
        output.retain_grad()
        saved["a"] = output

    handle = model.target.register_forward_hook(keep)
    logits = model(x)
    logits[torch.arange(len(labels)), labels].sum().backward()
    handle.remove()
    activations, gradients = saved["a"].detach().numpy(), saved["a"].grad.numpy()
    resize = T.Resize(tuple(x.shape[-2:]))  # what the study's code resized with
    maps = []
    for a, g in zip(activations, gradients):
        alpha = g.mean(axis=(1, 2))
        if threshold is None:
            cam = np.maximum((alpha[:, None, None] * a).mean(axis=0), 0)
        else:
            cam = np.maximum(alpha[:, None, None] * a, 0).mean(axis=0)
            cam = (cam - cam.min()) / (cam.max() - cam.min())
            cam = np.maximum(cam, threshold)
        maps.append(resize(torch.from_numpy(cam)[None])[0].numpy())
    return np.stack(maps)


def targets(labels):
    return [ClassifierOutputTarget(int(c)) for c in labels]


def test_threshold_gradcam_is_the_study_definition():
    model = tiny()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 1, 4])
    expected = hand_maps(model, x, labels, threshold=0.3)
    with ThresholdGradCAM(model, [model.target]) as cam:
        got = cam(x, targets(labels))
    assert got.shape == (4, 32, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(StudyCAM(model, model.target)(x, labels).numpy(), expected, atol=1e-5)
    assert got.min() >= 0.3 - 1e-6 and got.max() <= 1 + 1e-6


def test_threshold_is_a_parameter():
    model = tiny()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 2])
    expected = hand_maps(model, x, labels, threshold=0.6)
    with ThresholdGradCAM(model, [model.target], threshold=0.6) as cam:
        np.testing.assert_allclose(cam(x, targets(labels)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="threshold"):
        ThresholdGradCAM(model, [model.target], threshold=1.5)


def test_study_gradcam_is_unnormalised_and_ranks_like_pytorch_grad_cam():
    model = tiny(seed=3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2])
    expected = hand_maps(model, x, labels)
    with StudyGradCAM(model, [model.target]) as cam:
        ours = cam(x, targets(labels))
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    np.testing.assert_allclose(StudyCAM(model, model.target, explainer="gradcam")(x, labels).numpy(), expected, atol=1e-6)
    assert ours.max() < 0.9  # raw scale, not min-max normalised
    with GradCAM(model, [model.target]) as cam:
        theirs = cam(x, targets(labels))
    # pytorch-grad-cam sums instead of averaging and min-max normalises: same ranking, same Spearman score
    assert torch.all(spearman(torch.from_numpy(theirs), torch.from_numpy(ours)) > 0.9999)


def test_all_zero_map_is_defined():
    model = tiny()
    nn.init.zeros_(model.target.weight)
    nn.init.zeros_(model.target.bias)  # the target layer outputs zeros: no channel contributes
    x = torch.randn(2, 3, 32, 32)
    with ThresholdGradCAM(model, [model.target]) as cam:
        maps = cam(x, targets([0, 1]))
    assert not np.isnan(maps).any() and np.all(maps == np.float32(0.3))
    plain = StudyCAM(model, model.target, explainer="gradcam")(x, torch.tensor([0, 1]))
    assert torch.equal(plain, torch.zeros_like(plain))
    a = torch.zeros(1, 4, 3, 3)
    assert torch.equal(explain("threshold-gradcam", a, a, (6, 6)), torch.full((1, 6, 6), 0.3))


def test_batch_equals_one_image_at_a_time():
    model = tiny()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([2, 2, 0])
    cam = StudyCAM(model, model.target)
    whole = cam(x, labels)
    for i in range(3):
        torch.testing.assert_close(cam(x[i : i + 1], labels[i : i + 1])[0], whole[i])


def test_study_cam_touches_no_parameter_and_works_under_no_grad():
    model = tiny()
    model.stem.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = StudyCAM(model, model.target)(x, torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())  # backward stopped at the target layer
    assert not model.target._forward_hooks  # hook removed


def test_misuse_gives_clear_errors():
    model = tiny()
    x = torch.randn(2, 3, 32, 32)
    with ThresholdGradCAM(model, [model.target]) as cam:
        with pytest.raises(ValueError, match="one entry per image"):
            cam(x, targets([0]))  # pytorch-grad-cam would silently return a zero map for image 2
        with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
            cam(x, targets([0, 1]))
    with pytest.raises(IndexError):  # pytorch-grad-cam's own context manager swallows IndexError
        with ThresholdGradCAM(model, [model.target]) as cam:
            cam(x, targets([0, 1]))[2]
    assert not model.target._forward_hooks
    with pytest.raises(ValueError, match="labels must be in"):
        StudyCAM(model, model.target)(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="not a submodule"):
        StudyCAM(model, nn.Conv2d(1, 1, 1))


class ChannelsLast(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


class TinyChannelsLast(Tiny):
    """Tiny whose target layer returns (B, H, W, C), as CAFormer / ConvFormer stages do."""

    def __init__(self):
        super().__init__()
        self.target = ChannelsLast(self.target)

    def forward(self, x):
        a = self.target(torch.relu(self.stem(x)))
        return self.head(torch.relu(a).mean((1, 2)))


def test_channels_last_layer_with_reshape_transform():
    torch.manual_seed(0)
    reference = Tiny().eval()
    torch.manual_seed(0)
    model = TinyChannelsLast().eval()
    x = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([1, 3])
    to_channels_first = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    expected = hand_maps(reference, x, labels, threshold=0.3)
    with ThresholdGradCAM(model, [model.target], reshape_transform=to_channels_first) as cam:
        np.testing.assert_allclose(cam(x, targets(labels)), expected, atol=1e-5)
    got = StudyCAM(model, model.target, reshape_transform=to_channels_first)(x, labels)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


class TinyTokens(nn.Module):
    """A target layer that outputs (B, tokens, C), as a vision transformer's blocks do."""

    def __init__(self):
        super().__init__()
        self.target = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(2))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.target(x).transpose(1, 2).mean(1))


def test_token_layer_without_reshape_transform_is_refused():
    model = TinyTokens()
    with pytest.raises(ValueError, match="reshape_transform"):
        StudyCAM(model, model.target)(torch.randn(1, 3, 32, 32), torch.tensor([0]))


@pytest.mark.parametrize("name, layer, bf16", [("resnet18", "layer4", True), ("convnext_atto", "stages.3", False)])
def test_timm_models_both_paths_agree(name, layer, bf16):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()
    target = model.get_submodule(layer)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([3, 6])
    with ThresholdGradCAM(model, [target]) as cam:
        reference = cam(x, targets(labels))
    fast = StudyCAM(model, target)(x, labels).numpy()
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    if not bf16:  # bfloat16 on CPU is slow without AMX: one model is enough
        return
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = StudyCAM(model, target)(x, labels)
    assert mixed.dtype == torch.float32
    assert torch.all(spearman(mixed, torch.from_numpy(reference)) > 0.95)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    model = tiny()
    x = torch.randn(3, 3, 32, 32)
    labels = torch.tensor([0, 1, 2])
    cpu = StudyCAM(model, model.target)(x, labels)
    gpu = StudyCAM(model.cuda(), model.target)(x.cuda(), labels.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
