"""notebooks/inference.ipynb runs top to bottom headlessly (nbclient + ipykernel) on the session's tiny checkpoint,
from the notebooks/ folder as Jupyter would, and shows images and metrics; it is committed without outputs.

The kernel is this interpreter: a python3 kernelspec pointing at sys.executable is installed into a temporary
JUPYTER_PATH, so a different `python` earlier on PATH cannot run the notebook against other packages.

    python -m pytest tests/test_notebook.py -q
"""
import base64
import io
import re
import sys

import nbformat
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from conftest import ROOT
from conftest import make_dataset
from harness.metrics import evaluate_generator
from harness.checkpoint import load_generator

NOTEBOOK = ROOT / "notebooks" / "inference.ipynb"
SUMMARY = re.compile(r"mean over (\d+) images: L1 ([\d.]+)  PSNR ([\d.]+) dB  SSIM ([-\d.]+)  "
                     r"own/other-target L1 ratio ([\d.]+)")


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    first = nb.cells[0].source
    assert "PIX2PIX_CHECKPOINT" in first and "PIX2PIX_DATA" in first  # the settings come first


def test_load_generator_is_imported_as_the_readme_and_the_notebook_show(tiny_run):
    """One public loader, defined once (harness/checkpoint.py) and imported the way the README and the notebook
    show it; it rebuilds a trained generator from its file alone, in the test mode asked for."""
    shown = {path.name: re.findall(r"from ([\w.]+) import load_generator", path.read_text())
             for path in (ROOT / "README.md", NOTEBOOK)}
    assert shown == {"README.md": ["harness.checkpoint"], "inference.ipynb": ["harness.checkpoint"]}
    defined = [p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("*.py"), *ROOT.glob("harness/*.py")]
               if "def load_generator(" in p.read_text()]
    assert defined == ["harness/checkpoint.py"]
    G = load_generator(tiny_run / "run" / "generator.pt", mode="eval")
    assert not G.training and G.train_config["IMAGE_SIZE"] == 2 ** G.hparams["num_downs"]
    assert all(torch.equal(a, b) for a, b in
               zip(G.state_dict().values(), torch.load(tiny_run / "run" / "generator.pt")["generator"].values()))


@pytest.fixture
def this_interpreters_kernel(tmp_path, monkeypatch):
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    prefix = tmp_path / "jupyter"
    install(kernel_name="python3", prefix=str(prefix))  # argv[0] = sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))  # searched before every other location
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


@pytest.mark.parametrize("official", ["", "unet", "resnet"],
                         ids=["trained_here", "official_unet_file", "official_resnet_file"])
def test_notebook_runs_and_shows_images_and_metrics(tiny_run, this_interpreters_kernel, monkeypatch, tmp_path,
                                                     official):
    from nbclient import NotebookClient
    checkpoint, data = tiny_run / "run" / "generator.pt", tiny_run / "data" / "val"
    image_size, padded = 32, "32x32"  # the U-Net of 5 levels: 32 px, sides padded to multiples of 32
    if official:  # an official-code latest_net_G.pth: no settings inside, the direction comes from the notebook
        from harness import official_format
        from generator_model import ResnetGenerator, UNetGenerator
        torch.manual_seed(0)
        checkpoint = tmp_path / "latest_net_G.pth"
        G = UNetGenerator(3, 3, 4, 5, dropout_placement="official") if official == "unet" else \
            ResnetGenerator(3, 3, 4, 6)
        torch.save(official_format.official_state_dict(G), checkpoint)
        monkeypatch.setenv("PIX2PIX_DIRECTION", "BtoA")
        if official == "resnet":  # no depth to size it: the default 256 px; sides padded to multiples of 4 only
            image_size, padded = 256, "32x24"
    for key, value in (("PIX2PIX_CHECKPOINT", checkpoint), ("PIX2PIX_DATA", data), ("MPLBACKEND", "Agg"),
                       ("OMP_NUM_THREADS", "1"), ("PIX2PIX_DEVICE", "cpu")):  # compared with CPU numbers below
        monkeypatch.setenv(key, str(value))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # cwd notebooks/, as when opened in Jupyter: the notebook must find the repo root itself
    NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # input | output | target figure, and the any-size example
    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.width > 100
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert len(re.findall(r"L1 0\.\d{4}  PSNR \d+\.\d\d dB  SSIM -?\d\.\d{4}", text)) >= 4 + 1  # per image + mean
    match = SUMMARY.search(text)
    assert match, text
    n, l1, psnr, ssim, ratio = int(match[1]), *map(float, match.groups()[1:])
    # the same numbers as a direct evaluation with the notebook's settings (paper mode, seed 0, training batch)
    G = load_generator(checkpoint)
    subset = Subset(make_dataset(data, direction="BtoA", image_size=image_size, train=False), range(4))
    expected = evaluate_generator(G, DataLoader(subset, batch_size=1), torch.device("cpu"), seed=0)["summary"]
    assert n == 4
    assert (l1, psnr, ssim, ratio) == pytest.approx(
        (expected["l1"], expected["psnr"], expected["ssim"], expected["ratio"]), abs=6e-3)
    assert f"input 32x24 -> padded {padded} -> output 32x24" in text  # the any-size example keeps its size
    assert f"trained at {image_size} px" in text
