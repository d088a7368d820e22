"""ONNX export of the generator and its check against PyTorch, shared by export.py and bench.py.
A library module: nothing to run (see export.py).

The export is of eval mode (dropout off, batch norm with the running statistics), the deterministic test mode;
the paper's test mode (§3.3: dropout on, the batch's own statistics) is random and batch-dependent, so it is not
a fixed graph worth deploying. onnxscript's optimiser folds each eval-mode batch norm into the convolution before it.
"""
import contextlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

INPUT_NAME, OUTPUT_NAME = "input", "output"
TOLERANCE = 1e-4  # max abs difference to PyTorch eval allowed on the [-1, 1] output


def side_multiple(G: nn.Module) -> int:
    """Image sides must be multiples of this: 2^num_downs for a U-Net (each level halves them), 4 for a ResNet."""
    return G.side_multiple


def export_onnx(G: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write G (eval mode, on the CPU) to `path` as ONNX with dynamic batch, height and width.

    Height and width are declared as multiples of side_multiple(G), which is what the U-Net's own shape check
    asks for. `metadata` (e.g. the training DIRECTION) is stored in the file's metadata_props.
    """
    import onnx
    from torch.export import Dim
    m = side_multiple(G)
    was_training = G.training
    G.eval()
    try:
        # a sample of batch 2 and 2x2 blocks: sizes of 1 would be specialised by torch.export, not kept dynamic
        sample = torch.zeros(2, G.hparams["in_channels"], 2 * m, 2 * m)
        dims = {0: Dim("batch"), 2: m * Dim("height_blocks"), 3: m * Dim("width_blocks")}
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each stage on stdout
            program = torch.onnx.export(G, (sample,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"x": dims}, optimize=True)
    finally:
        G.train(was_training)
    model = program.model_proto
    facts = {"side_multiple": m, "value_range": "[-1, 1]", "mode": "eval"} | (metadata or {})
    for key, value in facts.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, str(path))


def onnx_session(path: str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session for `path` (threads 0 = onnxruntime's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(G: nn.Module, session, shapes: list[tuple[int, int, int, int]], seed: int = 0) -> float:
    """Largest abs difference between PyTorch eval and the ONNX session over random inputs of the given shapes;
    inf where either output is NaN."""
    generator = torch.Generator().manual_seed(seed)
    was_training = G.training
    G.eval()
    worst = 0.0
    try:
        for shape in shapes:
            x = torch.rand(shape, generator=generator) * 2 - 1
            with torch.no_grad():
                expected = G(x).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != expected.shape:
                raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
            # a NaN on either side is a mismatch: max(worst, nan) would keep `worst` and pass a NaN export
            worst = max(worst, float(np.nan_to_num(np.abs(got - expected), nan=np.inf).max()))
    finally:
        G.train(was_training)
    return worst


def check_shapes(G: nn.Module) -> list[tuple[int, int, int, int]]:
    """The two sizes an export is checked on: one square block at batch 1, a 2x1-block landscape at batch 2."""
    m, c = side_multiple(G), G.hparams["in_channels"]
    m *= max(1, 16 // m)  # a ResNet's residual blocks reflection-pad a quarter-size map: at least 8 px (16 is safe)
    return [(1, c, m, m), (2, c, m, 2 * m)]


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Input/output names and shapes and the stored metadata of an ONNX file, for printing."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)

    def shape(value) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return {"inputs": {v.name: shape(v) for v in model.graph.input},
            "outputs": {v.name: shape(v) for v in model.graph.output},
            "metadata": {p.key: p.value for p in model.metadata_props},
            "ops": sorted({n.op_type for n in model.graph.node}),
            "size_mb": Path(path).stat().st_size / 2 ** 20}
