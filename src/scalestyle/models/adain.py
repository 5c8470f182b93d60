"""AdaIN: arbitrary style transfer with adaptive instance normalization (Huang & Belongie, ICCV 2017).

Follows naoto0804/pytorch-AdaIN: `net.py` for the two ``nn.Sequential`` layouts (``vgg``, the Torch
``vgg_normalised`` encoder, and ``decoder``) so that the public ``vgg_normalised.pth`` and ``decoder.pth``
load by key (module index), `function.py::calc_mean_std` (unbiased variance plus ``eps`` 1e-5, then the
square root) and `adaptive_instance_normalization`, and `test.py::style_transfer` (``alpha`` interpolates
between the AdaIN target and the content features before decoding). Images are RGB in [0, 1], as
torchvision's ``ToTensor`` gives them there: the encoder's first layer, a 1x1 conv, does the rest of the
input normalisation (in the public file: RGB to BGR, x255 and the ImageNet mean of Caffe's VGG).

The encoder keeps the public layout up to relu4_1 (``vgg[:31]``, what every upstream script uses); the
public file also holds relu4_2 to relu5_4, which :mod:`scalestyle.adain_weights` checks and leaves out.
One class serves the full-size public model and the narrow demo: :class:`AdaINConfig` sets the channel
widths of the four stages, the topology (and so every key) is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

# where each of relu1_1, relu2_1, relu3_1, relu4_1 ends in the encoder (net.py's enc_1 .. enc_4 slices)
STAGE_ENDS = (4, 11, 18, 31)


@dataclass(frozen=True)
class AdaINConfig:
    """Channels at relu1_1, relu2_1, relu3_1 and relu4_1 (the decoder mirrors them); ``eps`` is added to
    the variance of the feature statistics. The defaults are the public model (VGG-19's widths)."""

    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be four integers >= 1 (relu1_1 .. relu4_1), got {self.widths}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


def _conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(c_in, c_out, (3, 3)), nn.ReLU()]


def _pool() -> nn.MaxPool2d:
    # ceil_mode: odd sides keep their last row and column (Torch's VGG port)
    return nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)


class VGGEncoder(nn.Sequential):
    """``vgg[:31]`` of net.py: a 1x1 input conv, then VGG-19's convs with reflection padding to relu4_1.

    Calling it gives relu4_1; :meth:`features` gives relu1_1, relu2_1, relu3_1 and relu4_1."""

    def __init__(self, cfg: AdaINConfig) -> None:
        w1, w2, w3, w4 = cfg.widths
        super().__init__(
            nn.Conv2d(3, 3, (1, 1)),
            *_conv_relu(3, w1),  # relu1_1
            *_conv_relu(w1, w1),
            _pool(),
            *_conv_relu(w1, w2),  # relu2_1
            *_conv_relu(w2, w2),
            _pool(),
            *_conv_relu(w2, w3),  # relu3_1
            *_conv_relu(w3, w3),
            *_conv_relu(w3, w3),
            *_conv_relu(w3, w3),
            _pool(),
            *_conv_relu(w3, w4),  # relu4_1
        )

    def features(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """[relu1_1, relu2_1, relu3_1, relu4_1] of images in [0, 1] (net.py's encode_with_intermediate)."""
        layers, feats, x, start = list(self.children()), [], img_B3HW, 0
        for end in STAGE_ENDS:
            for layer in layers[start:end]:
                x = layer(x)
            feats.append(x)
            start = end
        return feats


class AdaINDecoder(nn.Sequential):
    """net.py's ``decoder``: relu4_1 features back to an RGB image, nearest upsampling x2 three times."""

    def __init__(self, cfg: AdaINConfig) -> None:
        w1, w2, w3, w4 = cfg.widths
        super().__init__(
            *_conv_relu(w4, w3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_relu(w3, w3),
            *_conv_relu(w3, w3),
            *_conv_relu(w3, w3),
            *_conv_relu(w3, w2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_relu(w2, w2),
            *_conv_relu(w2, w1),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_relu(w1, w1),
            # the last conv has no ReLU: the output is left unbounded and clamped only when saved
            nn.ReflectionPad2d((1, 1, 1, 1)),
            nn.Conv2d(w1, 3, (3, 3)),
        )


def mean_std_BC11(feat_BCHW: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std over the pixels (function.py's calc_mean_std: the unbiased
    variance, as torch's ``var`` defaults, plus ``eps`` before the square root)."""
    if feat_BCHW.ndim != 4:
        raise ValueError(f"expected features (B, C, H, W), got shape {tuple(feat_BCHW.shape)}")
    var_BC11 = feat_BCHW.var(dim=(2, 3), keepdim=True, correction=1)
    return feat_BCHW.mean(dim=(2, 3), keepdim=True), (var_BC11 + eps).sqrt()


def adain_BCHW(content_BCHW: torch.Tensor, style_BCHW: torch.Tensor, eps: float) -> torch.Tensor:
    """The content features normalised per channel, then given the style features' mean and std (the two
    may differ in size; a style batch of one serves every content)."""
    if content_BCHW.shape[1] != style_BCHW.shape[1] or style_BCHW.shape[0] not in (1, content_BCHW.shape[0]):
        raise ValueError(
            f"content {tuple(content_BCHW.shape)} and style {tuple(style_BCHW.shape)} features need the same "
            "channels and the same batch (or a style batch of 1)"
        )
    c_mean, c_std = mean_std_BC11(content_BCHW, eps)
    s_mean, s_std = mean_std_BC11(style_BCHW, eps)
    return (content_BCHW - c_mean) / c_std * s_std + s_mean


class AdaIN(nn.Module):
    """Encoder (frozen in training), AdaIN at relu4_1 and the decoder."""

    def __init__(self, cfg: AdaINConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VGGEncoder(cfg)
        self.decoder = AdaINDecoder(cfg)

    def init_weights(self, generator: torch.Generator) -> None:
        """He-normal convs with zero biases (a plain ReLU stack without normalisation trains from it), the
        input conv at ``2x - 1``, which maps [0, 1] images to [-1, 1] as the public file's does to Caffe's
        input range."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                    module.weight.mul_((2 / fan_in) ** 0.5)
                    if module.bias is not None:
                        module.bias.zero_()
            first = self.encoder[0]
            assert isinstance(first, nn.Conv2d) and first.bias is not None
            first.weight.copy_(rearrange(2 * torch.eye(3), "o i -> o i 1 1"))
            first.bias.fill_(-1.0)

    def target_BCHW(self, content_B3HW: torch.Tensor, style_B3HW: torch.Tensor, alpha: float) -> torch.Tensor:
        """The relu4_1 features the decoder draws: ``alpha`` of the way from the content's features to
        their AdaIN target (test.py's ``feat * alpha + content_f * (1 - alpha)``)."""
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        content_BCHW = self.encoder(content_B3HW)
        target_BCHW = adain_BCHW(content_BCHW, self.encoder(style_B3HW), self.cfg.eps)
        return alpha * target_BCHW + (1 - alpha) * content_BCHW

    def forward(
        self, content_B3HW: torch.Tensor, style_B3HW: torch.Tensor, alpha: float = 1.0
    ) -> torch.Tensor:
        """Stylised images (unclamped; about [0, 1]) of content and style images in [0, 1]. The output is
        the content's size rounded up to a multiple of 8 (ceil pooling, then x8 upsampling)."""
        return self.decoder(self.target_BCHW(content_B3HW, style_B3HW, alpha))
