"""Conditional PatchGAN discriminator of pix2pix (paper §3.2.2 and appendix 6.1.2).

D sees the input image and a real or generated output side by side (channel concat) and scores each
overlapping patch: C64-C128-C256-C512 then a 1-channel conv giving logits (the sigmoid lives in the loss).
n_layers picks the patch size of the paper's Table 2: 0 -> 1x1 PixelGAN, 1 -> 16x16, 3 -> 70x70, 5 -> 286x286.
Beside it, recipes beyond the paper (off by default): pix2pixHD's multi-scale D (MultiScaleDiscriminator: the same
PatchGAN on the pair average-pooled by 2, 4, ...) and spectral norm on every conv (Miyato et al. 2018, as SPADE).
Quick check:  python discriminator_model.py
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from layers import conv_bias, init_weights, norm_layer

def conv_geometry(n_layers: int) -> list[tuple[int, int, int]]:
    """(kernel, stride, padding) of each convolution of PatchDiscriminator(n_layers=n_layers), in order."""
    if n_layers == 0:  # PixelGAN
        return [(1, 1, 0)] * 3
    return [(4, 2, 1)] * n_layers + [(4, 1, 1)] * 2   # the last C-block and the output conv keep resolution


def receptive_field(n_layers: int, scale: int = 0) -> int:
    """Side of the input patch that one output logit sees (70 for the default n_layers=3), in the pair's own pixels;
    `scale`: how many times the pair was average-pooled first (MultiScaleDiscriminator's D number `scale`)."""
    rf, jump = 1, 1
    for kernel, stride, _ in [(3, 2, 1)] * scale + conv_geometry(n_layers):  # each pooling: 3x3, stride 2
        rf += (kernel - 1) * jump
        jump *= stride
    return rf


def feature_sides(image_size: int, n_layers: int) -> list[int]:
    """Side of each convolution's output at this image size; the last is the patch logits'."""
    sides = [image_size]
    for kernel, stride, padding in conv_geometry(n_layers):
        sides.append((sides[-1] + 2 * padding - kernel) // stride + 1)
    return sides[1:]


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 n_layers: int = 3, norm: str = "batch", spectral_norm: bool = False, init: str = "normal",
                 init_gain: float = 0.02):
        super().__init__()
        self.hparams = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                            n_layers=n_layers, norm=norm)
        if spectral_norm:  # recorded only when on: a paper D's hparams stay as they were
            self.hparams["spectral_norm"] = spectral_norm
        bias = conv_bias(norm)
        c_in = in_channels + out_channels  # conditional: D sees (x, y)
        if n_layers == 0:  # PixelGAN: 1x1 convolutions only
            layers = [nn.Conv2d(c_in, base_channels, 1), nn.LeakyReLU(0.2),
                      nn.Conv2d(base_channels, base_channels * 2, 1, bias=bias),
                      norm_layer(norm, base_channels * 2), nn.LeakyReLU(0.2),
                      nn.Conv2d(base_channels * 2, 1, 1, bias=bias)]  # no bias with BN, as the official code
        else:
            # first layer: no norm (appendix 6.1.2)
            layers = [nn.Conv2d(c_in, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width = base_channels
            for i in range(1, n_layers + 1):
                stride = 2 if i < n_layers else 1   # the last C-block keeps resolution (C512 with stride 1)
                new_width = base_channels * min(2 ** i, 8)
                layers += [nn.Conv2d(width, new_width, 4, stride=stride, padding=1, bias=bias),
                           norm_layer(norm, new_width), nn.LeakyReLU(0.2)]
                width = new_width
            layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))  # 1-channel patch logits
        self.model = nn.Sequential(*layers)
        init_weights(self, init, init_gain)
        if spectral_norm:  # each conv's weight divided by its largest singular value (one power iteration a call)
            for i, layer in enumerate(self.model):
                if isinstance(layer, nn.Conv2d):
                    self.model[i] = nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: torch.Tensor, y: torch.Tensor, features: bool = False
                ) -> torch.Tensor | list[torch.Tensor]:
        """Patch logits; with `features`, the output of every LeakyReLU then the logits (feature matching)."""
        if not features:
            return self.model(torch.cat([x, y], dim=1))
        h, out = torch.cat([x, y], dim=1), []
        for layer in self.model:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                out.append(h)
        return out + [h]


def downsample(x: torch.Tensor) -> torch.Tensor:
    """pix2pixHD's pooling between scales: 3x3 average, stride 2, padding not counted."""
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def downsample_side(side: int) -> int:
    """The side of an image after `downsample`."""
    return (side + 1) // 2


class MultiScaleDiscriminator(nn.Module):
    """D_SCALES > 1 (pix2pixHD, Wang et al. 2018, §3.2): `scales` PatchGANs of the same shape; D number k sees the
    (input, output) pair average-pooled k times, so with the same 70x70 patches it judges ever coarser structure.
    Returns one logit map per scale (finest first); with `features`, one list of features + logits per scale."""

    def __init__(self, scales: int = 2, **patchgan):
        super().__init__()
        self.scales = nn.ModuleList([PatchDiscriminator(**patchgan) for _ in range(scales)])
        self.hparams = {**self.scales[0].hparams, "scales": scales}

    def forward(self, x: torch.Tensor, y: torch.Tensor, features: bool = False) -> list:
        out = []
        for k, D in enumerate(self.scales):
            if k:
                x, y = downsample(x), downsample(y)
            out.append(D(x, y, features))
        return out


if __name__ == "__main__":
    D = PatchDiscriminator()
    x = torch.randn(1, 3, 256, 256)
    print(f"PatchDiscriminator: {sum(p.numel() for p in D.parameters()) / 1e6:.2f} M parameters, "
          f"receptive field {receptive_field(3)}x{receptive_field(3)}, output {tuple(D(x, x).shape)}")
