"""The paper defaults stay exactly as they were: a tiny training run (tests/conftest.py's tiny_run: 2 epochs of
8 pairs at 32 px, narrow networks, fp32 on the CPU) ends with the weights recorded in
tests/fixtures/tiny_run_golden.pt, bit for bit.

Bit for bit holds where the fixture was recorded with the same CPU kernels (torch's CPU capability, e.g. AVX512,
and the CPU's vendor: oneDNN picks other AVX512 kernels on an Intel Xeon than on an AMD EPYC): other kernels round
convolutions differently, so there the comparison is to a tolerance far below what
any change of the method would move (a changed loss, schedule or initialisation moves weights by 1e-3 or more).
Record it again only when the defaults are meant to change: `python tests/test_golden_run.py` (writes the file)."""
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "tiny_run_golden.pt"
NETWORKS = ("generator", "discriminator")


def cpu_kernels() -> str:
    """torch's CPU capability and the CPU vendor (from /proc/cpuinfo where there is one): what picks the kernels."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")
    return f"{torch.backends.cpu.get_cpu_capability()} {vendor}".strip()


def final_weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return {net: ckpt[net] for net in NETWORKS}


def test_a_tiny_run_at_the_defaults_reproduces_the_recorded_weights(tiny_run):
    golden = torch.load(GOLDEN, weights_only=True)
    now = final_weights(tiny_run / "run")
    steps = torch.load(tiny_run / "run" / "checkpoints" / "last.pt", weights_only=True)["step"]
    exact = golden["cpu_kernels"] == cpu_kernels()
    for net in NETWORKS:
        assert list(now[net]) == list(golden[net]), f"{net}: the state dict's keys changed"
        for key, want in golden[net].items():
            got = now[net][key]
            assert got.shape == want.shape and got.dtype == want.dtype, f"{net}.{key}: shape or dtype changed"
            if net == "generator" and key.endswith("num_batches_tracked"):
                # the generator's batch-norm counters count its training steps: the fixture's (30) also counted the
                # test-mode batches of the run's sample grids and validations, which test mode no longer touches
                # (so a resumed run that validated more or less often stays bit-identical); no computation reads them
                assert got.item() == steps and want.item() > steps, f"{net}.{key}: {got.item()} != {steps} steps"
                continue
            if exact:
                assert torch.equal(got, want), f"{net}.{key}: not bit-identical (max diff " \
                    f"{(got.double() - want.double()).abs().max().item():.3g})"
            else:
                assert torch.allclose(got.double(), want.double(), rtol=1e-4, atol=1e-5), \
                    f"{net}.{key}: differs beyond another CPU's rounding (recorded on {golden['cpu_kernels']})"


if __name__ == "__main__":  # record the fixture: a fresh tiny run at today's defaults
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import conftest
    torch.set_num_threads(1)
    sys.path.insert(0, str(conftest.ROOT))
    import train
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        conftest.write_pairs(root / "data" / "train", 8, seed=0)
        conftest.write_pairs(root / "data" / "val", 4, seed=1)
        assert train.main(conftest.tiny_args(root / "data", root / "run")) == 0
        record = final_weights(root / "run") | {"cpu_kernels": cpu_kernels(), "torch": str(torch.__version__)}
        torch.save(record, GOLDEN)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KB, {record['cpu_kernels']})")
