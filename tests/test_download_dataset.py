"""
Offline tests for download_dataset.py: archives are built in tmp_path and served from a local
ThreadingHTTPServer that supports Range requests and can drop the connection midway.

    python -m pytest tests/test_download_dataset.py -q
"""
import http.server
import io
import os
import random
import socket
import tarfile
import threading
import urllib.request

import pytest

import download_dataset as dd

PAYLOAD = random.Random(0).randbytes(300_000)  # incompressible, so the .tar.gz spans many chunks


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours `Range: bytes=N-` with 206 unless server.mode says otherwise."""

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.mode != "no-range":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.mode == "drop":  # send half, then return: HTTP/1.0 closes the connection
            self.wfile.write(body[: len(body) // 2])
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a proxy from the environment


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.mode = {}, [], "ok"
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(urllib.request, "urlopen", fail)


def make_targz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """Build a .tar.gz in memory from (name, data) pairs or ready-made TarInfo entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def facades_targz(splits=("train", "val", "test"), name="facades") -> bytes:
    return make_targz([(f"{name}/{s}/1.jpg", PAYLOAD + s.encode()) for s in splits])


def leftovers(dest) -> list[str]:
    return sorted(os.listdir(dest))


def test_download_and_extract(server, tmp_path, capsys):
    server.files["/facades.tar.gz"] = facades_targz()
    dest = tmp_path / "data"
    assert dd.main(["facades", "--dest", str(dest), "--url", server.url + "/facades.tar.gz"]) == 0
    for s in ("train", "val", "test"):
        assert (dest / "facades" / s / "1.jpg").read_bytes() == PAYLOAD + s.encode()
    # archive is deleted after a successful extraction; no .part or temp folder left behind
    assert leftovers(dest) == ["facades"]
    out, err = capsys.readouterr()
    assert "100%" in err and "facades.tar.gz" in err  # tqdm progress bar
    assert (f"python train.py --PRESET=facades --TRAIN_DIR={dest}/facades/train "
            f"--VAL_DIR={dest}/facades/val") in out


def test_failed_download_keeps_part_then_resumes(server, tmp_path, capsys):
    data = facades_targz()
    server.files["/facades.tar.gz"] = data
    dest, url = tmp_path / "data", server.url + "/facades.tar.gz"

    server.mode = "drop"
    assert dd.main(["facades", "--dest", str(dest), "--url", url]) == 1
    part = dest / "facades.tar.gz.part"
    assert part.stat().st_size == len(data) // 2
    assert not (dest / "facades").exists() and not (dest / "facades.tar.gz").exists()
    err = capsys.readouterr().err
    assert "download failed" in err and url in err and str(part) in err and "Traceback" not in err

    server.mode, server.requests = "ok", []
    assert dd.main(["facades", "--dest", str(dest), "--url", url]) == 0
    assert server.requests == [("/facades.tar.gz", f"bytes={len(data) // 2}-")]
    assert (dest / "facades" / "val" / "1.jpg").read_bytes() == PAYLOAD + b"val"
    assert leftovers(dest) == ["facades"]


def test_resume_appends_to_identical_bytes(server, tmp_path):
    data = facades_targz()
    server.files["/x.tar.gz"] = data
    part, final = tmp_path / "x.tar.gz.part", tmp_path / "x.tar.gz"
    part.write_bytes(data[:12345])
    dd.download(server.url + "/x.tar.gz", str(part), str(final))
    assert server.requests == [("/x.tar.gz", "bytes=12345-")]
    assert final.read_bytes() == data and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = facades_targz()
    server.files["/x.tar.gz"], server.mode = data, "no-range"
    part, final = tmp_path / "x.tar.gz.part", tmp_path / "x.tar.gz"
    part.write_bytes(b"garbage that must not be kept")
    dd.download(server.url + "/x.tar.gz", str(part), str(final))
    assert final.read_bytes() == data


def test_http_404_is_a_clear_error(server, tmp_path, capsys):
    dest, url = tmp_path / "data", server.url + "/missing.tar.gz"
    assert dd.main(["maps", "--dest", str(dest), "--url", url]) == 1
    err = capsys.readouterr().err
    assert "404" in err and url in err and str(dest / "maps.tar.gz") in err and "Traceback" not in err
    assert leftovers(dest) == []


def test_offline_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/maps.tar.gz"
    assert dd.main(["maps", "--dest", str(tmp_path), "--url", url]) == 1
    err = capsys.readouterr().err
    assert "download failed" in err and url in err and "extracted without downloading" in err


def test_present_archive_is_extracted_without_network(tmp_path, no_network, capsys):
    (tmp_path / "night2day.tar.gz").write_bytes(facades_targz(("train", "test"), name="night2day"))
    assert dd.main(["night2day", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "night2day" / "test" / "1.jpg").read_bytes() == PAYLOAD + b"test"
    out = capsys.readouterr().out
    assert f"--VAL_DIR={tmp_path}/night2day/test" in out  # no val/, so VAL_DIR falls back to test/


def test_existing_dataset_is_not_downloaded_again(tmp_path, no_network, capsys):
    for s in ("train", "val"):
        (tmp_path / "maps" / s).mkdir(parents=True)
    assert dd.main(["maps", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "already exists" in out
    assert f"--TRAIN_DIR={tmp_path}/maps/train --VAL_DIR={tmp_path}/maps/val" in out


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_malicious_archive_is_refused(tmp_path, no_network, capsys, kind):
    dest, outside = tmp_path / "data", tmp_path / "escape.txt"
    dest.mkdir()
    bad = {
        "dotdot": ("../escape.txt", b"pwned"),
        "absolute": (str(outside), b"pwned"),
        "symlink": _symlink("facades/link", "../../"),
        "hardlink": tarfile.TarInfo("facades/hard"),
        "device": _device("facades/null"),
    }[kind]
    if kind == "hardlink":
        bad.type, bad.linkname = tarfile.LNKTYPE, "../escape.txt"
    members = [("facades/train/1.jpg", b"ok"), bad]
    if kind == "symlink":
        members.append(("facades/link/escape.txt", b"pwned"))  # would write through the link
    (dest / "facades.tar.gz").write_bytes(make_targz(members))

    assert dd.main(["facades", "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    name = bad[0] if isinstance(bad, tuple) else bad.name
    assert f"refusing unsafe archive member {name!r}" in err and "Traceback" not in err
    assert leftovers(tmp_path) == ["data"] and not outside.exists()
    assert leftovers(dest) == ["facades.tar.gz"]  # no dataset folder, no half-extracted temp folder


def test_failure_after_extraction_leaves_nothing(tmp_path, no_network, monkeypatch, capsys):
    (tmp_path / "facades.tar.gz").write_bytes(facades_targz())

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(dd.os, "replace", broken_replace)
    assert dd.main(["facades", "--dest", str(tmp_path)]) == 1
    assert "disk full" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["facades.tar.gz"]


def test_truncated_archive_is_a_clear_error(tmp_path, no_network, capsys):
    (tmp_path / "facades.tar.gz").write_bytes(facades_targz()[:-5000])
    assert dd.main(["facades", "--dest", str(tmp_path)]) == 1
    assert "could not extract" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["facades.tar.gz"]


def test_unknown_name_lists_choices(capsys):
    with pytest.raises(SystemExit) as e:
        dd.main(["horses"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "edges2handbags" in err and "night2day" in err


def test_cityscapes_prints_instructions(tmp_path, no_network, capsys):
    assert dd.main(["cityscapes", "--dest", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "cityscapes-dataset.com" in out and "prepare_cityscapes_dataset.py" in out
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- pretrained generators

def official_generator_bytes() -> bytes:
    """A small generator in the official code's format (a bare UnetGenerator state dict), as its server holds them."""
    import torch

    from generator_model import UNetGenerator
    from harness.official_format import official_state_dict
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(official_state_dict(UNetGenerator(3, 3, 4, 5, dropout_placement="official")), buf)
    return buf.getvalue()


MODEL = official_generator_bytes()


def error_line(err: str) -> str:
    """The one error line on stderr (besides tqdm's progress bar), with no traceback."""
    lines = [line for line in err.splitlines() if line and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def fetch(server, dest, *extra: str, path: str = "/facades_label2photo.pth") -> int:
    return dd.main(["--pretrained", "facades_label2photo", "--output", str(dest), "--url", server.url + path, *extra])


def test_pretrained_download_prints_a_predict_command_that_works(server, tmp_path, capsys):
    """The whole path of a user: download, the printed command run as printed (with real folders), a PNG out."""
    import shlex

    import predict
    from conftest import write_pairs
    server.files["/facades_label2photo.pth"] = MODEL
    dest = tmp_path / "pretrained"
    assert fetch(server, dest) == 0
    assert (dest / "facades_label2photo.pth").read_bytes() == MODEL and leftovers(dest) == ["facades_label2photo.pth"]
    out = capsys.readouterr().out
    assert "the official facades_label2photo generator (U-Net of 5 levels, ngf 4, batch norm)" in out
    assert "add --direction BtoA" in out
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("python predict.py"))
    assert command == (f"python predict.py --checkpoint {dest / 'facades_label2photo.pth'} --input your_images/ "
                       f"--output results/")
    write_pairs(tmp_path / "your_images", 2, seed=3)
    argv = shlex.split(command.replace("your_images/", str(tmp_path / "your_images")).replace(
        "results/", str(tmp_path / "results")))[2:]
    assert predict.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["000.png", "001.png"]


def test_pretrained_download_resumes_after_an_interruption(server, tmp_path, capsys):
    server.files["/facades_label2photo.pth"] = MODEL
    dest = tmp_path / "pretrained"
    server.mode = "drop"
    assert fetch(server, dest) == 1
    err = error_line(capsys.readouterr().err)
    assert "connection closed after" in err and "resumes" in err
    assert leftovers(dest) == ["facades_label2photo.pth.part"]  # nothing where predict.py would load it
    server.mode, server.requests = "ok", []
    assert fetch(server, dest) == 0
    assert server.requests == [("/facades_label2photo.pth", f"bytes={len(MODEL) // 2}-")]
    assert (dest / "facades_label2photo.pth").read_bytes() == MODEL and leftovers(dest) == ["facades_label2photo.pth"]


@pytest.mark.parametrize("served", ["an HTML page", "a truncated file", "a discriminator"])
def test_pretrained_download_refuses_what_is_not_a_generator(server, tmp_path, capsys, served):
    import torch
    if served == "an HTML page":
        body = b"<!DOCTYPE html><html><body>Service unavailable</body></html>"
        why = "web page"
    elif served == "a truncated file":  # complete by its Content-Length, but cut short at the source
        body, why = MODEL[:len(MODEL) * 2 // 3], "not an official pix2pix generator"
    else:
        buf = io.BytesIO()
        torch.save({"model.0.weight": torch.zeros(8, 6, 4, 4), "model.0.bias": torch.zeros(8)}, buf)
        body, why = buf.getvalue(), "discriminator"
    server.files["/facades_label2photo.pth"] = body
    dest = tmp_path / "pretrained"
    assert fetch(server, dest) == 1
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: download of ") and why in err and "nothing was saved" in err
    assert leftovers(dest) == []  # no .pth, and no .part that a re-run would resume


def test_pretrained_http_error_is_one_line(server, tmp_path, capsys):
    dest = tmp_path / "pretrained"
    assert fetch(server, dest, path="/missing.pth") == 1
    assert "404" in error_line(capsys.readouterr().err) and leftovers(dest) == []


def test_unknown_pretrained_model_is_one_line_listing_the_known_ones(tmp_path, no_network, capsys):
    assert dd.main(["--pretrained", "horse2zebra", "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: unknown pretrained model 'horse2zebra'; the official ones are facades_label2photo, "
                   "sat2map, map2sat, edges2shoes, day2night\n")
    assert not (tmp_path / "p").exists()


def test_present_pretrained_file_is_not_downloaded_again(tmp_path, no_network, capsys):
    (tmp_path / "sat2map.pth").write_bytes(MODEL)
    assert dd.main(["--pretrained", "sat2map", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "already exists" in out and f"--checkpoint {tmp_path / 'sat2map.pth'}" in out and "AtoB" in out
