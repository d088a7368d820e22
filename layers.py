"""Building blocks shared by both networks: the normalisation choice and the weight init.

Not run directly; imported by generator_model.py and discriminator_model.py.
"""
import torch.nn as nn

NORMS = ("batch", "instance", "none")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm (paper default), InstanceNorm (no affine, no running stats, as the official code) or none."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"NORM must be one of {NORMS}, got {norm!r}")


def conv_bias(norm: str) -> bool:
    """BatchNorm has its own shift, so convs feeding it need no bias; InstanceNorm without affine does, and so does
    a conv with no norm at all (the official code leaves that one without a bias: docs/configuration.md)."""
    return norm != "batch"


INITS = {  # weight init (INIT) -> how it draws a conv weight w with gain g
    "normal": lambda w, g: nn.init.normal_(w, 0.0, g),                    # paper §6.2: N(0, 0.02)
    "xavier": lambda w, g: nn.init.xavier_normal_(w, gain=g),
    "kaiming": lambda w, g: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),  # gain unused, as the official code
    "orthogonal": lambda w, g: nn.init.orthogonal_(w, gain=g),
}


def init_weights(module: nn.Module, kind: str = "normal", gain: float = 0.02) -> None:
    """Conv weights drawn as INITS[kind] says; batch-norm scale from N(1, gain); all biases 0."""
    if kind not in INITS:
        raise ValueError(f"INIT must be one of {tuple(INITS)}, got {kind!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            INITS[kind](m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
