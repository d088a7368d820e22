"""Generators of the official pix2pix code (junyanz/pytorch-CycleGAN-and-pix2pix) in and out.

Its `latest_net_G.pth` files (its own runs and its pretrained models) are bare state dicts of its `UnetGenerator`
(keys like `model.model.1.model.3.weight`) or of its `ResnetGenerator` (keys like `model.10.conv_block.1.weight`),
with no settings inside. This module maps them onto UNetGenerator (with the official dropout placement and ReLU'd
skips) and ResnetGenerator: the same convolutions and norms, so the weights carry over one to one and the function
is the official one.

Not run directly: harness.checkpoint.load_generator (and so predict.py, evaluate.py, demo.py) reads such files, and
`python export.py --format official` writes one.
"""
from typing import Any

import torch
import torch.nn as nn

from generator_model import ResnetGenerator, UNetGenerator
from harness.errors import CheckpointError, OfficialFormatError
from harness.weights import load_weights

ROOT = "model.model."  # the outermost UnetSkipConnectionBlock's layers
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _level(k: int) -> str:
    """Key prefix of the layers of U-Net level k (0 = outermost); each level nests the next one as a submodule,
    at index 1 of the outermost block's Sequential and at index 3 of every other one."""
    return ROOT if k == 0 else ROOT + "1.model." + "3.model." * (k - 1)


def _module_map(num_downs: int) -> dict[str, str]:
    """Our module name -> the official module name, for every layer with weights or statistics.

    Official layers per level: outermost [downconv, submodule, ReLU, upconv, Tanh]; middle [LeakyReLU, downconv,
    downnorm, submodule, ReLU, upconv, upnorm, (Dropout)]; innermost [LeakyReLU, downconv, ReLU, upconv, upnorm].
    Level k's decoding half is our decoder block num_downs - 1 - k.
    """
    names = {"encoder.0.0": _level(0) + "0", "head.0": _level(0) + "3"}
    for k in range(1, num_downs - 1):
        j = num_downs - 1 - k
        names |= {f"encoder.{k}.0": _level(k) + "1", f"encoder.{k}.1": _level(k) + "2",
                  f"decoder.{j}.0": _level(k) + "5", f"decoder.{j}.1": _level(k) + "6"}
    inner = _level(num_downs - 1)
    return names | {"bottleneck.0": inner + "1", "decoder.0.0": inner + "3", "decoder.0.1": inner + "4"}


def _resnet_module_map(n_blocks: int) -> dict[str, str]:
    """Our ResnetGenerator's module names -> the official ones. The official layers are one nn.Sequential (`model.N`):
    the stem's conv and norm are model.1-2, the downsamplings model.4-5 and 7-8, block i model.(10+i) (its
    conv_block's layers at the same indices as our block's body), the upsamplings model.(10+n)-(11+n) and
    (13+n)-(14+n), the head's conv model.(17+n)."""
    n = n_blocks
    names = {"stem.1": "model.1", "stem.2": "model.2", "down.0": "model.4", "down.1": "model.5",
             "down.3": "model.7", "down.4": "model.8", "up.0": f"model.{10 + n}", "up.1": f"model.{11 + n}",
             "up.3": f"model.{13 + n}", "up.4": f"model.{14 + n}", "head.1": f"model.{17 + n}"}
    return names | {f"blocks.{i}.body.{j}": f"model.{10 + i}.conv_block.{j}" for i in range(n) for j in range(8)}


def _rename(key: str, modules: dict[str, str]) -> str:
    module, tensor = key.rsplit(".", 1)
    return f"{modules[module]}.{tensor}"


# ----------------------------------------------------------------------------- reading

def is_state_dict(obj: Any) -> bool:
    """A bare state dict (name -> tensor), as the official code saves, rather than one of our checkpoints."""
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def unwrapped(state: dict[str, Any]) -> dict[str, Any]:
    """Without the 'module.' prefix that a state dict saved from a DataParallel/DDP wrapper carries."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def is_official_unet(state: dict[str, Any]) -> bool:
    state = unwrapped(state) if is_state_dict(state) else state
    return is_state_dict(state) and ROOT + "0.weight" in state and ROOT + "1.model.1.weight" in state


def is_official_resnet(state: dict[str, Any]) -> bool:
    state = unwrapped(state) if is_state_dict(state) else state
    return is_state_dict(state) and "model.1.weight" in state and "model.10.conv_block.1.weight" in state


def is_official_generator(state: dict[str, Any]) -> bool:
    """A latest_net_G.pth of the official code: its UnetGenerator or its ResnetGenerator."""
    return is_official_unet(state) or is_official_resnet(state)


def describe(state: dict[str, Any]) -> str:
    """What a bare state dict that is not an official generator seems to be, for the error message."""
    keys = list(state)
    if any(".conv_block." in k for k in keys):
        blocks = len({k.split(".")[1] for k in keys if ".conv_block." in k})
        return (f"a ResNet generator with {blocks} blocks but not the official layout (no 'model.1.weight' or "
                f"'model.10.conv_block.1.weight'; keys like {keys[len(keys) // 2]!r})")
    if "net.0.weight" in state:
        return "an official PixelGAN discriminator (a latest_net_D.pth, keys like 'net.0.weight')"
    if "model.0.weight" in state and state["model.0.weight"].dim() == 4 and state["model.0.weight"].shape[-1] == 4:
        return "an official PatchGAN discriminator (a latest_net_D.pth, keys like 'model.0.weight')"
    return f"a state dict of an unknown network (first keys: {', '.join(keys[:3])})"


def infer_hparams(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The hyperparameters of our generator that holds the official one in `state`: a ResNet's (resnet_hparams) or
    a U-Net's (depth, width, channels and norm; dropout as the official default, on)."""
    state = unwrapped(state)
    if is_official_resnet(state):
        return resnet_hparams(state)
    if not is_official_unet(state):
        raise OfficialFormatError(f"not supported: this file is {describe(state)}; only generators of the official "
                                  f"UnetGenerator (unet_128, unet_256, ...) and ResnetGenerator (resnet_6blocks, "
                                  f"resnet_9blocks) load here")
    num_downs = 1
    while _level(num_downs) + "1.weight" in state:
        num_downs += 1
    _check_shape(state, ROOT + "0.weight", 1, 4, "an official U-Net's is (ngf, 1 or 3 input channels, 4, 4)")
    _check_shape(state, ROOT + "3.weight", 1, 4, "an official U-Net's is (2 * ngf, 1 or 3 output channels, 4, 4)")
    first, last = state[ROOT + "0.weight"], state[ROOT + "3.weight"]  # Conv2d (ngf, in, 4, 4); ConvT (2ngf, out, 4, 4)
    return dict(in_channels=first.shape[1], out_channels=last.shape[1],
                base_channels=first.shape[0], num_downs=num_downs, norm=_norm(state, _level(1) + "1", _level(1) + "2"),
                dropout=True, dropout_placement="official")


def _norm(state: dict[str, torch.Tensor], conv: str, norm: str) -> str:
    """The official --norm, from a conv followed by a norm layer. BatchNorm has its own shift, so the official convs
    feeding it have no bias; InstanceNorm (affine=False, no running statistics) has no tensors and its convs do have
    biases; without a norm (--norm none) the convs have no bias either (the official bias rule only looks for
    InstanceNorm): a conv weight alone."""
    return "instance" if conv + ".bias" in state else "batch" if norm + ".weight" in state else "none"


def _check_shape(state: dict[str, torch.Tensor], key: str, channel_dim: int, kernel: int, expected: str) -> None:
    """state[key] is a conv weight with a kernel x kernel kernel and 1 or 3 image channels in dimension
    `channel_dim`; else a one-line error saying what it should be (`expected`)."""
    if key not in state:
        raise OfficialFormatError(f"tensor {key!r} is missing; {expected}")
    t = state[key]
    if t.dim() != 4 or t.shape[channel_dim] not in (1, 3) or t.shape[2:] != (kernel, kernel):
        raise OfficialFormatError(f"tensor {key!r} has shape {tuple(t.shape)}; {expected}")


def resnet_hparams(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Blocks, width, channels, norm and dropout of an official ResnetGenerator state dict."""
    blocks = {k.split(".")[1] for k in state if ".conv_block." in k}
    n = len(blocks)
    if n not in (6, 9):
        raise OfficialFormatError(f"not supported: this file is an official ResNet generator with {n} residual "
                                  f"blocks; only resnet_6blocks and resnet_9blocks (the ones the official define_G "
                                  f"builds) load here")
    _check_shape(state, "model.1.weight", 1, 7, "an official ResNet's first conv is (ngf, 1 or 3 input channels, 7, 7)")
    _check_shape(state, f"model.{17 + n}.weight", 0, 7,
                 f"the last conv of an official resnet_{n}blocks is (1 or 3 output channels, ngf, 7, 7)")
    # with dropout the block is [pad, conv, norm, ReLU, Dropout, pad, conv, norm]: its second conv moves from 5 to 6
    return dict(in_channels=state["model.1.weight"].shape[1], out_channels=state[f"model.{17 + n}.weight"].shape[0],
                base_channels=state["model.1.weight"].shape[0], n_blocks=n, norm=_norm(state, "model.1", "model.2"),
                dropout="model.10.conv_block.5.weight" not in state)


def generator_from_official(state: dict[str, torch.Tensor]) -> nn.Module:
    """Our UNetGenerator or ResnetGenerator computing exactly the official network stored in `state` (a
    latest_net_G.pth). A file that does not fit is refused in one line naming its first unexpected, missing or
    wrong-shape tensor."""
    prefix = "module." if unwrapped(state) is not state else ""
    state = unwrapped(state)
    hp = infer_hparams(state)
    if "n_blocks" in hp:
        G, modules = ResnetGenerator(**hp), _resnet_module_map(hp["n_blocks"])
        network = fits = f"an official resnet_{hp['n_blocks']}blocks"
        example = "model.10.conv_block.1.weight"
        fits += f" (ngf {hp['base_channels']}, {hp['norm']} norm, {'with' if hp['dropout'] else 'no'} dropout)"
    else:
        if hp["num_downs"] < 5:
            raise OfficialFormatError(f"official U-Net with {hp['num_downs']} levels; the official UnetGenerator "
                                      f"always has at least 5")
        G, modules = UNetGenerator(**hp), _module_map(hp["num_downs"])
        network = f"an official U-Net of depth {hp['num_downs']}"
        example = ROOT + "1.model.1.weight"
        fits = f"an official U-Net (ngf {hp['base_channels']}, depth {hp['num_downs']}, {hp['norm']} norm)"
    theirs = {v: k for k, v in modules.items()}
    ours = {}
    for key, tensor in state.items():
        module, _, name = key.rpartition(".")
        if module not in theirs:
            raise OfficialFormatError(f"unexpected tensor {prefix + key!r}: not a layer of {network} (keys like "
                                      f"{example!r})")
        ours[f"{theirs[module]}.{name}"] = tensor
    expected = G.state_dict()
    if hp["norm"] == "instance":  # files from PyTorch < 0.4 kept running statistics of InstanceNorm: unused
        ours = {k: v for k, v in ours.items() if k in expected or k.rsplit(".", 1)[1] not in BN_BUFFERS}
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):  # files from PyTorch < 0.4 lack this counter (unused at inference)
            ours.setdefault(key, torch.zeros_like(value))
        elif hp["norm"] == "none" and key.endswith(".bias") and not key.startswith("head."):
            ours.setdefault(key, torch.zeros_like(value))  # the official bias-free conv: ours with a zero bias
    try:
        load_weights(G, ours, name=lambda k: prefix + _rename(k, modules))
    except (CheckpointError, RuntimeError) as e:  # the check's one line, or anything load_state_dict still finds
        raise OfficialFormatError(f"weights do not fit {fits}: {str(e).splitlines()[0][:300]}") from None
    return G


# ----------------------------------------------------------------------------- writing

def official_state_dict(G: nn.Module) -> dict[str, torch.Tensor]:
    """G's weights under the official UnetGenerator's (or, for a ResNet, ResnetGenerator's) names: what its
    latest_net_G.pth holds.

    Only a U-Net computing the official function qualifies: ReLU'd skips, the official dropout placement
    (or no dropout: then run the official test.py with --no_dropout), and at least 5 levels.
    """
    hp = G.hparams
    if "n_blocks" in hp:
        return official_resnet_state_dict(G)
    if hp.get("skip_relu", True) is False:  # a generator from before the U-Net skip fix (harness/checkpoint.py)
        raise OfficialFormatError("this generator was trained before the U-Net skip fix (skip_relu=False): the "
                                  "official network computes a different function with these weights; retrain it")
    if hp["dropout"] and hp["dropout_placement"] != "official":
        raise OfficialFormatError(f"this generator has DROPOUT_PLACEMENT={hp['dropout_placement']!r}; the official "
                                  f"network puts its dropout elsewhere, so it would compute a different function in "
                                  f"its test mode. Train with DROPOUT_PLACEMENT=official (or DROPOUT=False) to export")
    if hp["num_downs"] < 5:
        raise OfficialFormatError(f"num_downs={hp['num_downs']}: the official UnetGenerator has at least 5 levels")
    return _renamed(G, _module_map(hp["num_downs"]))


def official_resnet_state_dict(G: nn.Module) -> dict[str, torch.Tensor]:
    """A ResnetGenerator's weights under the official ResnetGenerator's names (_resnet_module_map)."""
    return _renamed(G, _resnet_module_map(G.hparams["n_blocks"]))


def _renamed(G: nn.Module, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """G's tensors under the official names. Without a norm the official convs have no bias (all but the last):
    only zero biases carry over, as nothing."""
    state = G.state_dict()
    if G.hparams["norm"] == "none":
        biases = [k for k in state if k.endswith(".bias") and not k.startswith("head.")]
        if any(state[k].any() for k in biases):
            raise OfficialFormatError("NORM='none': the official network's convs have no bias without a norm, ours "
                                      "have non-zero ones; it cannot hold these weights")
        state = {k: v for k, v in state.items() if k not in biases}
    return {_rename(k, modules): v.detach().cpu().contiguous().clone() for k, v in state.items()}


def official_options(G: nn.Module) -> str:
    """The official test.py options that build the network matching official_state_dict(G)."""
    hp = G.hparams
    if "n_blocks" in hp:
        if hp["n_blocks"] not in (6, 9):
            raise OfficialFormatError(f"n_blocks={hp['n_blocks']}: the official define_G builds resnet_6blocks and "
                                      f"resnet_9blocks only")
        return (f"--netG resnet_{hp['n_blocks']}blocks --ngf {hp['base_channels']} --norm {hp['norm']} --input_nc "
                f"{hp['in_channels']} --output_nc {hp['out_channels']}" + ("" if hp["dropout"] else " --no_dropout"))
    if hp["num_downs"] not in (7, 8):
        raise OfficialFormatError(f"num_downs={hp['num_downs']}: the official define_G builds only unet_128 (7) and "
                                  f"unet_256 (8); build its UnetGenerator(num_downs={hp['num_downs']}) directly")
    return (f"--netG unet_{2 ** hp['num_downs']} --ngf {hp['base_channels']} --norm {hp['norm']} --input_nc "
            f"{hp['in_channels']} --output_nc {hp['out_channels']}" + ("" if hp["dropout"] else " --no_dropout"))
