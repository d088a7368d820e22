"""Building blocks shared by both networks: the normalisation choice and the paper's weight init.

Not run directly; imported by generator_model.py and discriminator_model.py.
"""
import torch.nn as nn

NORMS = ("batch", "instance")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm (paper default) or InstanceNorm (no affine, no running stats, as the official code)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    raise ValueError(f"NORM must be one of {NORMS}, got {norm!r}")


def conv_bias(norm: str) -> bool:
    """BatchNorm has its own shift, so convs feeding it need no bias; InstanceNorm without affine does."""
    return norm != "batch"


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """paper §6.2: weights from N(0, 0.02); batch-norm scale from N(1, 0.02); all biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
