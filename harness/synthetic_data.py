"""Procedural stand-in for the CMP Facades set, so training works offline on a fresh clone.

Every file is one RGB JPEG of width 2*S and height S in the pix2pix layout: the rendered "photo" on the
LEFT half (A) and the flat-colour label map on the RIGHT half (B), so the labels -> photo task is
direction BtoA, as on the real facades. Each scene is drawn once as an integer class map (sky, wall,
windows, doors, cornices, sills, balconies, shop fronts, ground); the label half paints each class in a
flat facades-like colour and the photo half renders the same map with lighting, texture and soft shadows.
The class decides most of the appearance, so a U-Net learns the mapping in a few epochs, while the
geometry (buildings, floors, columns, window sizes) changes with every image.

    python -m harness.synthetic_data --output data/synthetic                  # 200 train + 100 val, 256 px, seed 0
    python -m harness.synthetic_data --output /tmp/syn --n-train 8 --n-val 4 --size 128 --seed 1

The same seed gives byte-identical files; the folder appears atomically or not at all.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness.atomic import atomic_path

# Class ids of the integer scene map, and their flat label colours (close to the facades palette).
SKY, WALL, WINDOW, DOOR, CORNICE, SILL, BALCONY, SHOP, GROUND = range(9)
PALETTE = np.array([
    (0, 0, 222),     # sky / background: dark blue, as facades "background"
    (0, 48, 255),    # wall: facades "facade" blue
    (0, 128, 255),   # window
    (255, 160, 0),   # door
    (255, 80, 0),    # cornice
    (35, 252, 228),  # sill
    (192, 255, 64),  # balcony
    (174, 0, 0),     # shop
    (0, 0, 130),     # ground (facades lumps it into background; kept separate so it is learnable)
], dtype=np.uint8)

# Plausible plaster / brick / stone colours; one is picked and jittered per building.
WALL_COLOURS = np.array([
    (226, 216, 196), (205, 175, 135), (172, 96, 74), (190, 190, 184), (236, 232, 222),
    (212, 184, 152), (160, 142, 122), (198, 160, 150), (180, 170, 140),
], dtype=np.float32)


def _draw(maps: dict, cls: int, bid: int, y0: int, y1: int, x0: int, x1: int) -> None:
    """Paint a rectangle into the scene maps (clipped); later rectangles win, as in a painter's algorithm."""
    size = maps["cls"].shape[0]
    ya, yb, xa, xb = max(y0, 0), min(y1, size), max(x0, 0), min(x1, size)
    if ya >= yb or xa >= xb:
        return
    maps["cls"][ya:yb, xa:xb] = cls
    maps["bid"][ya:yb, xa:xb] = bid
    # local coordinates let the renderer place frames, mullions and shading relative to each object
    maps["lv"][ya:yb, xa:xb] = (np.arange(ya, yb, dtype=np.float32) - y0)[:, None]
    maps["lu"][ya:yb, xa:xb] = (np.arange(xa, xb, dtype=np.float32) - x0)[None, :]
    maps["rh"][ya:yb, xa:xb] = y1 - y0
    maps["rw"][ya:yb, xa:xb] = x1 - x0


def _scene(rng: np.random.Generator, size: int) -> dict:
    """Random facade scene: 1-3 adjacent buildings on a street, each with its own floors and window grid."""
    s = size / 256  # all pixel constants below are tuned at 256 px and scale with the image
    maps = {"cls": np.full((size, size), SKY, np.uint8), "bid": np.zeros((size, size), np.int32)}
    for k in ("lu", "lv", "rh", "rw"):
        maps[k] = np.zeros((size, size), np.float32)
    px = lambda v: max(1, int(round(v * s)))  # noqa: E731  (a length in 256-px units -> pixels, never 0)

    ground_top = size - int(round(size * rng.uniform(0.04, 0.10)))
    _draw(maps, GROUND, 0, ground_top, size, 0, size)

    # horizontal extents: sometimes sky shows at the sides or in a gap between buildings
    n_bld = int(rng.choice([1, 1, 2, 2, 3]))
    left = int(size * rng.uniform(-0.15, 0.12)) if rng.random() < 0.5 else 0
    right = size - (int(size * rng.uniform(-0.15, 0.12)) if rng.random() < 0.5 else 0)
    widths = rng.uniform(0.6, 1.4, n_bld)
    edges = left + np.concatenate([[0], np.cumsum(widths) / widths.sum()]) * (right - left)
    edges = np.round(edges).astype(int)

    for b in range(n_bld):
        x0, x1 = int(edges[b]), int(edges[b + 1])
        if b > 0 and rng.random() < 0.25:  # a narrow alley of sky between two buildings
            x0 += px(rng.uniform(4, 12))
        if x1 - x0 < px(24):
            continue
        top = int(size * rng.uniform(0.03, 0.38))
        bid = b + 1
        _draw(maps, WALL, bid, top, ground_top, x0, x1)

        # top cornice, overhanging the wall a little
        ch = px(rng.uniform(4, 9))
        _draw(maps, CORNICE, bid, top, top + ch, x0 - px(2), x1 + px(2))

        # ground floor, optionally topped by a string course (a thinner cornice)
        gf = int(size * rng.uniform(0.13, 0.20))
        gf_top = ground_top - gf
        if rng.random() < 0.7:
            _draw(maps, CORNICE, bid, gf_top - px(3), gf_top, x0, x1)
        upper_top, upper_bot = top + ch + px(3), gf_top - px(3)
        n_floors = int(np.clip(round((upper_bot - upper_top) / (size * rng.uniform(0.10, 0.16))), 0, 8))
        n_cols = int(np.clip(round((x1 - x0) / (size * rng.uniform(0.11, 0.22))), 1, 9))
        pitch = (x1 - x0) / n_cols
        win_w = max(2, int(pitch * rng.uniform(0.35, 0.62)))
        has_sills = rng.random() < 0.7
        balcony_mode = rng.choice(["none", "per_window", "full"], p=[0.45, 0.35, 0.2])

        if n_floors > 0:
            floor_h = (upper_bot - upper_top) / n_floors
            win_h = max(2, int(floor_h * rng.uniform(0.45, 0.72)))
            win_off = int((floor_h - win_h) * rng.uniform(0.3, 0.5))
            for f in range(n_floors):
                fy = int(upper_top + f * floor_h)
                wy0, wy1 = fy + win_off, fy + win_off + win_h
                for c in range(n_cols):
                    wx0 = int(x0 + c * pitch + (pitch - win_w) / 2)
                    _draw(maps, WINDOW, bid, wy0, wy1, wx0, wx0 + win_w)
                    if has_sills:
                        _draw(maps, SILL, bid, wy1, wy1 + px(3), wx0 - px(2), wx0 + win_w + px(2))
                # balconies cover the lower part of the windows, as in the facades labels (skip the top floor)
                if f < n_floors - 1 and balcony_mode != "none" and rng.random() < 0.5:
                    by0 = wy1 - int(win_h * 0.35)
                    by1 = wy1 + px(3)
                    if balcony_mode == "full":
                        _draw(maps, BALCONY, bid, by0, by1, x0 + px(3), x1 - px(3))
                    else:
                        for c in range(n_cols):
                            wx0 = int(x0 + c * pitch + (pitch - win_w) / 2)
                            _draw(maps, BALCONY, bid, by0, by1, wx0 - px(4), wx0 + win_w + px(4))

        # ground floor: shop windows or plain windows, plus one door reaching the street
        door_col = int(rng.integers(n_cols))
        door_w = max(2, int(min(pitch * 0.6, px(rng.uniform(18, 30)))))
        door_h = int(gf * rng.uniform(0.65, 0.85))
        shop = rng.random() < 0.5
        for c in range(n_cols):
            if c == door_col:
                continue
            if shop:
                sw = int(pitch * 0.8)
                sx0 = int(x0 + c * pitch + (pitch - sw) / 2)
                _draw(maps, SHOP, bid, gf_top + px(8), ground_top - px(3), sx0, sx0 + sw)
            else:
                wx0 = int(x0 + c * pitch + (pitch - win_w) / 2)
                _draw(maps, WINDOW, bid, gf_top + px(10), gf_top + px(10) + int(gf * 0.5), wx0, wx0 + win_w)
        dx0 = int(x0 + door_col * pitch + (pitch - door_w) / 2)
        _draw(maps, DOOR, bid, ground_top - door_h, ground_top, dx0, dx0 + door_w)
    return maps


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise (std ~1): a coarse random grid upsampled bicubically; cheap plaster/cloud texture."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1 2 1]/4 blur: softens the rasterised edges the way a camera lens would."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    p = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]) / 4


def _render(rng: np.random.Generator, maps: dict) -> np.ndarray:
    """Photo of the scene: per-class appearance, a few smooth per-image parameters, shadows and noise."""
    cls = maps["cls"]
    size = cls.shape[0]
    s = size / 256
    jitter = lambda rgb, amt: np.asarray(rgb, np.float32) * np.float32(rng.uniform(1 - amt, 1 + amt))  # noqa: E731

    # the few per-image parameters: colours, textures and lighting, drawn in a fixed order
    sky_top, sky_hor = jitter((90, 135, 200), 0.12), jitter((195, 210, 228), 0.06)
    clouds = _smooth_noise(rng, size, 5)
    n_bld = int(maps["bid"].max()) + 1
    wall_cols = (WALL_COLOURS[rng.integers(len(WALL_COLOURS), size=n_bld)]
                 * rng.uniform(0.9, 1.08, (n_bld, 1)).astype(np.float32))
    plaster = _smooth_noise(rng, size, 12)
    glass_dark, glass_ref = jitter((30, 38, 52), 0.2), jitter((115, 135, 160), 0.12)
    frame_col = jitter((228, 226, 218), 0.05) if rng.random() < 0.7 else jitter((85, 60, 42), 0.15)
    shop_frame, wood = jitter((48, 48, 52), 0.2), jitter((105, 70, 45), 0.2)
    stone_tint, metal = jitter((238, 234, 224), 0.04), jitter((45, 45, 50), 0.25)
    pave, asphalt = jitter((160, 156, 148), 0.08), jitter((92, 92, 96), 0.15)
    light = np.float32(rng.uniform(0.85, 1.08))
    light_x, light_y = np.float32(rng.uniform(-0.12, 0.12)), np.float32(rng.uniform(-0.1, 0.1))

    # work on flat per-class pixel lists, so each pixel is shaded once, not once per layer (docs/performance.md)
    flat = {k: maps[k].ravel() for k in ("bid", "lu", "lv", "rw", "rh")}
    y_of = np.repeat(np.arange(size, dtype=np.float32) / size, size)
    cls_flat = cls.ravel()
    photo = np.empty((size * size, 3), np.float32)
    f = max(1.0, 1.6 * s)  # frame width

    def pixels(c: int):
        m = np.flatnonzero(cls_flat == c)
        lu, lv, rw, rh = (flat[k][m] for k in ("lu", "lv", "rw", "rh"))
        tv = (lv / np.maximum(rh, 1))[:, None]  # relative height inside the object's rectangle
        fw = np.clip(np.minimum(rw, rh) / 10, s, f)  # thinner frames on small windows, so glass still dominates
        frame = (lu < fw) | (lu >= rw - fw) | (lv < fw) | (lv >= rh - fw)
        wall = wall_cols[flat["bid"][m]] * (1 + 0.05 * plaster.ravel()[m])[:, None]
        return m, lu, lv, rw, rh, tv, frame, wall

    # sky: deeper blue at the top, hazy towards the horizon, faint clouds
    m, *_ = pixels(SKY)
    photo[m] = sky_top + (sky_hor - sky_top) * np.clip(y_of[m] / 0.6, 0, 1)[:, None] + 10 * clouds.ravel()[m][:, None]

    # walls: one jittered colour per building, plus low-frequency plaster variation
    m, *_, wall = pixels(WALL)
    photo[m] = wall

    # windows: dark glass reflecting the sky near the top, shadowed recess, light or dark frames and mullions
    m, lu, lv, rw, rh, tv, frame, _ = pixels(WINDOW)
    glass = (glass_dark + (glass_ref - glass_dark) * (1 - tv) ** 2) * (1 - 0.45 * np.exp(-lv / (2.5 * s)))[:, None]
    bars = frame | ((np.abs(lu - rw / 2) < f / 2 + 0.3) & (rw >= 14 * s)) | \
        ((np.abs(lv - rh * 0.3) < f / 2 + 0.3) & (rh >= 22 * s))
    photo[m] = np.where(bars[:, None], frame_col, glass)

    # shop fronts: big glass with stronger reflection and a thick dark frame
    m, lu, lv, rw, rh, tv, _, _ = pixels(SHOP)
    glass = glass_dark * 1.3 + (glass_ref * 1.1 - glass_dark * 1.3) * (1 - tv) ** 1.5
    thick = (lu < 2 * f) | (lu >= rw - 2 * f) | (lv < 2 * f) | (lv >= rh - 2 * f)
    photo[m] = np.where(thick[:, None], shop_frame, glass)

    # doors: wood with a centre split and a panel line, darker frame
    m, lu, lv, rw, rh, tv, frame, _ = pixels(DOOR)
    panels = (np.abs(lu - rw / 2) < 0.8 * s + 0.3) | (np.abs(lv - rh * 0.45) < 0.8 * s + 0.3)
    photo[m] = wood * np.where(frame | panels, 0.55, 1.0)[:, None] * (1 - 0.25 * tv)

    # cornices and sills: pale stone, lit on top and shaded underneath
    for c in (CORNICE, SILL):
        m, *_, tv, _, wall = pixels(c)
        photo[m] = (0.55 * wall + 0.45 * stone_tint) * (1.12 - 0.45 * tv)

    # balconies: metal railing (top rail + bars) over the shadowed wall behind, on a stone slab
    m, lu, lv, rw, rh, tv, _, wall = pixels(BALCONY)
    rail = (lv < 2 * s) | (np.mod(lu, 5 * s) < 1.6 * s) | (lu < f) | (lu >= rw - f)
    col = np.where(rail[:, None], metal, wall * 0.5)
    photo[m] = np.where((lv >= rh - 3 * s)[:, None], (0.55 * wall + 0.45 * stone_tint) * 0.9, col)

    # ground: pavement strip along the buildings, asphalt further out
    m, *_, tv, _, _ = pixels(GROUND)
    photo[m] = np.where(tv < 0.45, pave, asphalt) * (1 - 0.15 * tv)
    photo = photo.reshape(size, size, 3)

    # soft shadows cast downwards (slightly sideways) by cornices, sills and balconies onto what lies below
    occ = np.isin(cls, (CORNICE, SILL, BALCONY))
    shadow = np.zeros((size, size), np.float32)
    depth = max(2, int(round(6 * s)))
    for d in range(1, depth + 1):
        dx = d // 3
        np.maximum(shadow[d:, dx:], occ[:-d, :size - dx] * np.float32(1 - (d - 1) / depth), out=shadow[d:, dx:])
    shadow[occ | (cls == SKY)] = 0

    # smooth global lighting: one random brightness and a gentle left/right and top/bottom gradient (not on sky)
    ramp = np.arange(size, dtype=np.float32) / size - 0.5
    shade = light * (1 + light_x * ramp[None, :] + light_y * ramp[:, None])
    shade = np.where(cls == SKY, np.float32(1), shade) * (1 - 0.45 * shadow)
    photo = _blur(photo * shade[..., None])
    photo += rng.standard_normal(photo.shape, dtype=np.float32) * 2.5
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8)


def make_pair(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """-> (photo, labels), each uint8 HxWx3. Both show the same random scene; draws only from rng."""
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    maps = _scene(rng, size)
    labels = PALETTE[maps["cls"]]
    return _render(rng, maps), labels


def write_pair(path: str | os.PathLike, photo: np.ndarray, labels: np.ndarray) -> None:
    """Save one pix2pix file: A = photo on the left, B = labels on the right, JPEG quality 95."""
    # subsampling=0 (4:4:4) keeps the flat label colours from bleeding across edges in the chroma planes
    Image.fromarray(np.concatenate([photo, labels], axis=1)).save(path, quality=95, subsampling=0)


def generate(root: str | os.PathLike, n_train: int = 200, n_val: int = 100, size: int = 256, seed: int = 0) -> None:
    """Writes root/train/{1..n_train}.jpg and root/val/{1..n_val}.jpg (A=photo left | B=labels right), JPEG quality 95.
    Atomic: build everything in a temporary sibling folder, then os.replace it into place, so an interrupted run never
    leaves a half-written dataset at root. If root already exists, raise FileExistsError."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; delete it to regenerate")
    with atomic_path(root) as tmp:  # includes KeyboardInterrupt: never a partial folder at root
        # separate streams: val scenes are never seen in training, and n_train does not change val
        for split, n, stream in (("train", n_train, 0), ("val", n_val, 1)):
            rng = np.random.default_rng([seed, stream])
            (tmp / split).mkdir(parents=True)
            for i in range(1, n + 1):
                write_pair(tmp / split / f"{i}.jpg", *make_pair(rng, size))


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic facades-style paired dataset (A=photo | B=labels).")
    ap.add_argument("--output", "--out", required=True, help="folder to create (must not exist); --out: former name")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        generate(args.output, args.n_train, args.n_val, args.size, args.seed)
    except OSError as e:  # one line instead of a traceback: the folder exists (generate's own message), a
        # read-only or full disk, a path below a file
        raise SystemExit(f"error: {e}" if e.strerror is None else
                         f"error: cannot write {args.output}: {e.strerror}; choose a writable folder")
    print(f"wrote {args.n_train} train + {args.n_val} val pairs of {2 * args.size}x{args.size} to {args.output} "
          f"in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
