"""Building blocks shared by both networks: the normalisation choice and the weight init.

Not run directly; imported by generator_model.py and discriminator_model.py.
"""
import torch.nn as nn

NORMS = ("batch", "instance", "none")
INITS = ("normal", "xavier", "kaiming", "orthogonal")


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


def init_weights(module: nn.Module, kind: str = "normal", gain: float = 0.02) -> None:
    """paper §6.2: weights from N(0, 0.02) ("normal"); or the official code's other choices: xavier_normal and
    orthogonal scaled by `gain`, kaiming_normal (fan_in; `gain` unused). Batch-norm scale from N(1, gain); biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if kind == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif kind == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif kind == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif kind == "orthogonal":
                nn.init.orthogonal_(m.weight, gain=gain)
            else:
                raise ValueError(f"INIT must be one of {INITS}, got {kind!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
