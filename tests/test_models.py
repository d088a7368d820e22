"""Tests for generator_model.py, discriminator_model.py and layers.py: sizes, paper structure, receptive
field and weight init (CPU, ~20 s; the default-size networks are built once per module).

    python -m pytest tests/test_models.py -q
"""
import pytest
import torch
import torch.nn as nn

from discriminator_model import PatchDiscriminator, feature_sides, receptive_field
from generator_model import UNetGenerator
from harness.configurator import num_downs_for


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def default_G() -> UNetGenerator:
    torch.manual_seed(0)
    return UNetGenerator()


@pytest.fixture(scope="module")
def default_D() -> PatchDiscriminator:
    torch.manual_seed(0)
    return PatchDiscriminator()


# ----------------------------------------------------------------------------- generator

def test_default_generator_size_and_output(default_G):
    assert round(n_params(default_G) / 1e6, 2) == 54.41  # the paper's unet_256 (54,413,955 parameters)
    with torch.no_grad():
        out = default_G.eval()(torch.randn(1, 3, 256, 256))
    default_G.train()
    assert out.shape == (1, 3, 256, 256)
    assert out.abs().max() <= 1.0  # tanh output
    assert out.std() > 0  # not a constant image


@pytest.mark.parametrize("size, depth", [(128, 7), (256, 8), (512, 9)])
def test_depth_follows_image_size_down_to_a_1x1_bottleneck(size, depth):
    assert num_downs_for(size) == depth
    G = UNetGenerator(base_channels=4, num_downs=num_downs_for(size))
    seen = {}
    G.bottleneck.register_forward_hook(lambda m, i, o: seen.update(bottleneck=o.shape))  # returns None
    with torch.no_grad():
        out = G(torch.randn(1, 3, size, size))
    assert out.shape == (1, 3, size, size)
    assert tuple(seen["bottleneck"][-2:]) == (1, 1)
    assert len(G.encoder) + 1 == depth and len(G.decoder) == depth - 1


@pytest.mark.parametrize("shape", [(48, 48), (32, 48), (33, 32)])
def test_side_not_divisible_raises_a_helpful_error(shape):
    G = UNetGenerator(base_channels=4, num_downs=5)
    with pytest.raises(ValueError) as err:
        G(torch.randn(1, 3, *shape))
    message = str(err.value)
    assert "divisible by 32" in message and str(shape) in message and "num_downs" in message


def test_encoder_decoder_structure_follows_the_paper(default_G):
    G = default_G
    convs = lambda block: [m for m in block if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]  # noqa: E731
    norms = lambda block: [m for m in block if isinstance(m, nn.BatchNorm2d)]  # noqa: E731
    # Encoder C64-C128-C256-C512-C512-C512-C512-C512, 4x4 stride-2 convolutions, LeakyReLU 0.2
    enc = list(G.encoder) + [G.bottleneck]
    assert [convs(b)[0].out_channels for b in enc] == [64, 128, 256, 512, 512, 512, 512, 512]
    for b in enc:
        assert convs(b)[0].kernel_size == (4, 4) and convs(b)[0].stride == (2, 2)
    assert norms(G.encoder[0]) == [] and norms(G.bottleneck) == []  # no norm on C64 nor at the 1x1 bottleneck
    assert all(len(norms(b)) == 1 for b in G.encoder[1:])
    assert all(isinstance(b[-1], nn.LeakyReLU) and b[-1].negative_slope == 0.2 for b in G.encoder)
    assert isinstance(G.bottleneck[-1], nn.ReLU)
    # Decoder CD512-CD1024-CD1024-C1024-C1024-C512-C256-C128 (widths after the skip concatenation)
    ups = [convs(b)[0] for b in G.decoder] + [convs(G.head)[0]]
    assert [u.in_channels for u in ups] == [512, 1024, 1024, 1024, 1024, 512, 256, 128]
    assert [u.out_channels for u in ups] == [512, 512, 512, 512, 256, 128, 64, 3]
    assert all(isinstance(u, nn.ConvTranspose2d) and u.stride == (2, 2) for u in ups)
    dropouts = [[m.p for m in b if isinstance(m, nn.Dropout)] for b in G.decoder]
    assert dropouts == [[0.5]] * 3 + [[]] * 4  # dropout exactly in the first three decoder blocks
    assert all(len(norms(b)) == 1 and isinstance(b[-1], nn.ReLU) for b in G.decoder)
    assert isinstance(G.head[-1], nn.Tanh) and convs(G.head)[0].bias is not None
    # with batch norm the U-Net's convs are bias-free (BN has its own shift), as in the official code
    for b in list(G.encoder) + [G.bottleneck] + list(G.decoder):
        assert convs(b)[0].bias is None
    assert sum(isinstance(m, nn.Dropout) for m in UNetGenerator(base_channels=4, num_downs=5,
                                                                  dropout=False).modules()) == 0


def test_instance_norm_variant():
    G = UNetGenerator(base_channels=4, num_downs=5, norm="instance")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in G.modules())
    inorms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(inorms) == 3 + 4  # encoder blocks 2..4 and all four decoder blocks
    assert all(m.bias is not None for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    with torch.no_grad():
        out = G(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    D = PatchDiscriminator(base_channels=4, norm="instance")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    with torch.no_grad():
        assert D(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    with pytest.raises(ValueError, match="NORM"):
        UNetGenerator(base_channels=4, num_downs=5, norm="group")


@pytest.mark.parametrize("in_ch, out_ch", [(1, 3), (3, 1), (1, 1)])
def test_channel_counts(in_ch, out_ch):
    G = UNetGenerator(in_channels=in_ch, out_channels=out_ch, base_channels=4, num_downs=5)
    D = PatchDiscriminator(in_channels=in_ch, out_channels=out_ch, base_channels=4)
    x = torch.randn(1, in_ch, 64, 64)
    with torch.no_grad():
        y = G(x)
        assert y.shape == (1, out_ch, 64, 64)
        assert D(x, y).shape == (1, 1, 6, 6)


# ----------------------------------------------------------------------------- discriminator

def test_default_discriminator_size_and_patch_grid(default_D):
    assert round(n_params(default_D) / 1e6, 2) == 2.77
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert default_D(x, x).shape == (1, 1, 30, 30)
    layers = list(default_D.model)
    assert isinstance(layers[0], nn.Conv2d) and layers[0].in_channels == 6  # conditional: sees input ++ output
    assert not isinstance(layers[1], nn.modules.batchnorm._BatchNorm)  # no norm on the first C64
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    for i, m in enumerate(layers):  # convs feeding BatchNorm have no bias
        if isinstance(m, nn.Conv2d) and i + 1 < len(layers):
            assert (m.bias is None) == isinstance(layers[i + 1], nn.BatchNorm2d)


@pytest.mark.parametrize("n_layers, image_size", [(0, 8), (1, 32), (3, 70), (3, 256), (5, 300)])
def test_feature_sides_are_the_networks(n_layers, image_size):
    """feature_sides (which the configurator's smallest-image check uses) gives the side of every convolution's
    output, measured on the network itself."""
    D = PatchDiscriminator(base_channels=2, n_layers=n_layers)
    x, sides = torch.zeros(1, 3, image_size, image_size), []
    for m in D.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, inputs, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        D(x, x)
    assert feature_sides(image_size, n_layers) == sides


@pytest.mark.parametrize("n_layers, expected", [(0, 1), (1, 16), (3, 70), (5, 286)])
def test_receptive_field_measured_by_backprop(n_layers, expected):
    """One central logit's gradient w.r.t. the input is nonzero exactly on its receptive field. With all
    weights positive and BN in eval mode (an affine map), no two paths can cancel."""
    assert receptive_field(n_layers) == expected
    D = PatchDiscriminator(in_channels=1, out_channels=1, base_channels=4, n_layers=n_layers).double().eval()
    with torch.no_grad():
        for m in D.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.weight.fill_(0.05)
                if m.bias is not None:
                    m.bias.zero_()
    size = 512 if n_layers == 5 else 160
    x = torch.ones(1, 1, size, size, dtype=torch.double, requires_grad=True)
    out = D(x, torch.ones_like(x))
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert 0 < rows.min() and rows.max() < size - 1, "receptive field clipped by the border: enlarge the input"
    assert rows.max() - rows.min() + 1 == expected
    assert cols.max() - cols.min() + 1 == expected
    assert (x.grad[0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1] > 0).all()  # a full square


# ----------------------------------------------------------------------------- init (paper §6.2)

@pytest.mark.parametrize("net", ["G", "D"])
def test_weight_init(net, default_G, default_D):
    model = default_G if net == "G" else default_D
    conv_weights, bn_weights = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            conv_weights.append(m.weight.detach().flatten())
            if m.weight.numel() >= 2000:  # per layer, where the sample is big enough to judge
                assert abs(m.weight.std().item() - 0.02) < 0.002, m
                assert abs(m.weight.mean().item()) < 0.002, m
            if m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0, m
        elif isinstance(m, nn.BatchNorm2d):
            bn_weights.append(m.weight.detach())
            assert torch.count_nonzero(m.bias) == 0, m
    w = torch.cat(conv_weights)
    assert abs(w.std().item() - 0.02) < 0.0005 and abs(w.mean().item()) < 0.0005
    bn = torch.cat(bn_weights)
    assert abs(bn.mean().item() - 1.0) < 0.005 and abs(bn.std().item() - 0.02) < 0.005
    assert bn.std() > 0  # drawn from N(1, 0.02), not left at the constant 1
