"""U-Net generator of pix2pix (paper §3.2.1 and appendix 6.1.1).

Encoder C64-C128-C256-C512-C512-C512-C512-C512, decoder CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128
(channel counts after the skip concatenation), 4x4 convolutions with stride 2 throughout.
Its test mode (paper §3.3: dropout stays on, batch norm uses the test batch's statistics) is here too.
Quick check:  python generator_model.py   (prints the parameter count and an output shape)
"""
import torch
import torch.nn as nn

from layers import conv_bias, init_weights, norm_layer

DROPOUT_PLACEMENTS = ("paper", "official")
TEST_MODES = ("paper", "eval")


def dropout_blocks(num_downs: int, placement: str) -> range:
    """Indices of the decoder blocks (0 = innermost) that get dropout 0.5. "paper" (§3.1, appendix 6.1.1): the first
    three. "official" (the authors' PyTorch code and its pretrained models): the num_downs - 5 blocks right after the
    innermost one, none on the innermost."""
    if placement == "paper":
        return range(min(3, num_downs - 1))
    if placement == "official":
        return range(1, max(1, num_downs - 4))
    raise ValueError(f"DROPOUT_PLACEMENT must be one of {DROPOUT_PLACEMENTS}, got {placement!r}")


class UNetGenerator(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64,
                 num_downs: int = 8, norm: str = "batch", dropout: bool = True, dropout_placement: str = "paper",
                 init: str = "normal", init_gain: float = 0.02):
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {num_downs}")
        self.hparams = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                            num_downs=num_downs, norm=norm, dropout=dropout, dropout_placement=dropout_placement)
        bias = conv_bias(norm)
        # encoder widths 64,128,256,512,512,...: doubling, capped at 8x the base width
        widths = [base_channels * min(2 ** i, 8) for i in range(num_downs)]

        def down(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=bias)

        def up(c_in: int, c_out: int, use_bias: bool = bias) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=use_bias)

        # Encoder: Convolution-Norm-LeakyReLU(0.2); no norm on the first layer (appendix 6.1.1).
        self.encoder = nn.ModuleList([nn.Sequential(down(in_channels, widths[0]), nn.LeakyReLU(0.2))])
        for i in range(1, num_downs - 1):
            self.encoder.append(nn.Sequential(down(widths[i - 1], widths[i]), norm_layer(norm, widths[i]),
                                              nn.LeakyReLU(0.2)))
        # 1x1 bottleneck: no norm (errata in appendix 6.1.1: BatchNorm would zero a 1x1 activation at batch 1)
        self.bottleneck = nn.Sequential(down(widths[-2], widths[-1]), nn.ReLU())

        # Decoder: Convolution-Norm-(Dropout)-ReLU, input = previous decoder output ++ mirrored encoder output.
        # paper §3.1 / 6.1.1: dropout 0.5 in the decoder is G's only noise source.
        with_dropout = dropout_blocks(num_downs, dropout_placement) if dropout else range(0)
        self.decoder = nn.ModuleList()
        for j, i in enumerate(range(num_downs - 1, 0, -1)):     # i = width index this block produces
            c_in = widths[i] if j == 0 else widths[i] * 2
            block = [up(c_in, widths[i - 1]), norm_layer(norm, widths[i - 1])]
            if j in with_dropout:
                block.append(nn.Dropout(0.5))
            block.append(nn.ReLU())
            self.decoder.append(nn.Sequential(*block))
        self.head = nn.Sequential(up(widths[0] * 2, out_channels, use_bias=True), nn.Tanh())
        # The reference (official code, and the authors' Lua code) starts each decoder block with a ReLU on
        # [skip, x]; x is already ReLU'd and ReLU(LeakyReLU(z)) = ReLU(z), so ReLU on the skip is the same.
        self.skip_activation = nn.ReLU()
        init_weights(self, init, init_gain)

    @property
    def side_multiple(self) -> int:
        """Image sides must be multiples of this: each of the num_downs levels halves them."""
        return 2 ** self.hparams["num_downs"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2 ** self.hparams["num_downs"]
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"U-Net with num_downs={self.hparams['num_downs']} needs image sides divisible by "
                             f"{side}, got {tuple(x.shape[-2:])}; resize/crop the input or change num_downs")
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(x)
        for block in self.decoder:
            x = block(x)
            x = torch.cat([self.skip_activation(skips.pop()), x], dim=1)  # encoder layer i -> decoder n-i
        return self.head(x)


class ResidualBlock(nn.Module):
    """x + (3x3 conv, norm, ReLU, [dropout 0.5], 3x3 conv, norm), reflection-padded: the same width in and out."""

    def __init__(self, width: int, norm: str, dropout: bool):
        super().__init__()
        bias = conv_bias(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=bias), norm_layer(norm, width)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """GENERATOR="resnet_6blocks"/"resnet_9blocks": the official code's ResNet generator (Johnson et al. 2016, as
    CycleGAN uses it): a 7x7 stem, two stride-2 downsamplings, n_blocks residual blocks at 4x the base width, two
    stride-2 transposed-conv upsamplings and a 7x7 tanh head. Sides must be multiples of 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64, n_blocks: int = 9,
                 norm: str = "batch", dropout: bool = True, init: str = "normal", init_gain: float = 0.02):
        super().__init__()
        self.hparams = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                            n_blocks=n_blocks, norm=norm, dropout=dropout)
        bias, w = conv_bias(norm), base_channels
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, w, 7, bias=bias), norm_layer(norm, w),
                                  nn.ReLU())
        self.down = nn.Sequential(*[layer for c in (w, 2 * w) for layer in (
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(norm, 2 * c), nn.ReLU())])
        self.blocks = nn.Sequential(*[ResidualBlock(4 * w, norm, dropout) for _ in range(n_blocks)])
        self.up = nn.Sequential(*[layer for c in (4 * w, 2 * w) for layer in (
            nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            norm_layer(norm, c // 2), nn.ReLU())])
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(w, out_channels, 7), nn.Tanh())
        init_weights(self, init, init_gain)

    side_multiple = 4  # two stride-2 downsamplings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"the ResNet generator needs image sides divisible by 4, got {tuple(x.shape[-2:])}")
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


GENERATORS = ("unet", "resnet_6blocks", "resnet_9blocks")


def set_test_mode(G: nn.Module, mode: str = "paper") -> dict[nn.Module, tuple[float | None, bool]]:
    """G in a test mode for good, changing no buffer; returns each batch norm's (momentum, track_running_stats)."""
    if mode not in TEST_MODES:
        raise ValueError(f"test mode must be one of {TEST_MODES}, got {mode!r}")
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    previous = {m: (m.momentum, m.track_running_stats) for m in norms}
    G.train(mode == "paper")
    for m in previous:  # paper (§3.3): dropout on, the batch's statistics, untracked; eval: running statistics
        m.momentum, m.track_running_stats = 0.0, m.track_running_stats and mode != "paper"
    return previous


if __name__ == "__main__":
    G = UNetGenerator()
    print(f"UNetGenerator: {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M parameters")
    print("output shape:", tuple(G(torch.randn(1, 3, 256, 256)).shape))
