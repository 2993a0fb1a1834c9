"""Grad-CAM targets and the study's input transform: whole image, model's normalisation, any input form."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv

from dcls_lib.models import ImageTransform, cam_target, channels_last_to_nchw, convert_to_dcls, input_transform


def small(name):
    torch.manual_seed(0)
    if name == "tiny_metaformer":
        model = MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), token_mixers=(SepConv, SepConv, Attention, Attention),
        norm_layers=[LayerNorm2dNoBias] * 2 + [LayerNormNoBias] * 2,
                           num_classes=10)
    else:
        model = timm.create_model(name, num_classes=10)
    return model.eval()


def test_pil_numpy_and_tensor_inputs_give_the_same_result():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    transform = ImageTransform(224)
    from_pil = transform(Image.fromarray(array))
    from_numpy = transform(array)
    from_uint8 = transform(torch.from_numpy(array).permute(2, 0, 1))
    from_float = transform(torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    batch = transform(torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).repeat(2, 1, 1, 1))
    assert from_pil.shape == (3, 224, 224) and batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(from_pil, from_uint8, rtol=0, atol=0)
    torch.testing.assert_close(from_numpy, from_uint8, rtol=0, atol=0)
    torch.testing.assert_close(from_float, from_uint8)
    torch.testing.assert_close(batch[1], from_uint8)


def test_normalisation_uses_the_models_mean_and_std():
    gray = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    model = small("convnext_atto")
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    out = input_transform(model, image_size=16)(gray)
    expected = (128 / 255 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.25, 0.5])
    torch.testing.assert_close(out[:, 0, 0], expected)
    assert out.shape == (3, 16, 16)


def test_the_whole_image_is_kept_no_centre_crop():
    # white on the left quarter of a 256-px image: resized whole, the edge lands at 224/4 = 56; a
    # 256 -> 224 centre crop (the seed code's ConvNeXt transform) would put it at 64 - 16 = 48
    image = torch.zeros(3, 256, 256, dtype=torch.uint8)
    image[:, :, :64] = 255
    transform = ImageTransform(224, mean=(0, 0, 0), std=(1, 1, 1))
    row = transform(image)[0, 112]
    edge = int((row > 0.5).sum())
    assert edge == 56
    assert "crop=None" in repr(transform)


def test_bad_images_are_refused_with_the_reason():
    transform = ImageTransform(224)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transform(torch.full((3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="3, H, W"):
        transform(torch.zeros(1, 8, 8))
    with pytest.raises(TypeError, match="PIL image"):
        transform([[0, 1]])
    with pytest.raises(ValueError, match="image_size"):
        ImageTransform(0)


@pytest.mark.parametrize(
    "name, layer, channels",
    [("resnet10t", "layer4", 512), ("convnext_atto", "stages.3", 320), ("fastvit_t8", "final_conv", 768),
     ("tiny_metaformer", "stages.3", 96)],
)
@pytest.mark.parametrize("dcls", [False, True], ids=["baseline", "dcls"])
def test_grad_cam_runs_on_the_target_of_small_family_members(name, layer, channels, dcls):
    model = small(name)
    if dcls:
        convert_to_dcls(model)
    target = cam_target(model)
    assert target.name == layer and target.layer is model.get_submodule(layer)
    seen = []
    handle = target.layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model=model, target_layers=[target.layer], reshape_transform=target.reshape_transform) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
    handle.remove()
    assert seen[0] == (2, channels, 2, 2)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_channels_last_helper():
    x = torch.randn(2, 5, 6, 7)
    assert torch.equal(channels_last_to_nchw(x), x.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="B, H, W, C"):
        channels_last_to_nchw(torch.zeros(2, 3))


def test_models_outside_the_families_are_refused():
    with pytest.raises(TypeError, match="not a model family"):
        cam_target(timm.create_model("mobilenetv3_small_050", device="meta"))
