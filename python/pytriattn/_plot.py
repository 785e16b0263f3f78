"""Line charts as PNG with numpy only (no matplotlib): axes, ticks, grid, legend, a 5x7 pixel font.

Used by `pytriattn eval` / `pytriattn bench` for quality-vs-budget, speed-vs-depth and memory-vs-context
plots. Text is drawn upper-case (the font has no lower case).
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._png import encode_png

# 5x7 glyphs, one string per glyph: 7 rows of 5 pixels, '#' = ink, rows separated by '/'.
_GLYPHS = {
    "0": ".###./#...#/#..##/#.#.#/##..#/#...#/.###.", "1": "..#../.##../..#../..#../..#../..#../.###.",
    "2": ".###./#...#/....#/...#./..#../.#.../#####", "3": "####./....#/....#/.###./....#/....#/####.",
    "4": "...#./..##./.#.#./#..#./#####/...#./...#.", "5": "#####/#..../####./....#/....#/#...#/.###.",
    "6": ".###./#..../#..../####./#...#/#...#/.###.", "7": "#####/....#/...#./..#../.#.../.#.../.#...",
    "8": ".###./#...#/#...#/.###./#...#/#...#/.###.", "9": ".###./#...#/#...#/.####/....#/....#/.###.",
    "A": ".###./#...#/#...#/#####/#...#/#...#/#...#", "B": "####./#...#/#...#/####./#...#/#...#/####.",
    "C": ".###./#...#/#..../#..../#..../#...#/.###.", "D": "####./#...#/#...#/#...#/#...#/#...#/####.",
    "E": "#####/#..../#..../####./#..../#..../#####", "F": "#####/#..../#..../####./#..../#..../#....",
    "G": ".###./#...#/#..../#.###/#...#/#...#/.####", "H": "#...#/#...#/#...#/#####/#...#/#...#/#...#",
    "I": ".###./..#../..#../..#../..#../..#../.###.", "J": "..###/...#./...#./...#./...#./#..#./.##..",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#", "L": "#..../#..../#..../#..../#..../#..../#####",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#", "N": "#...#/#...#/##..#/#.#.#/#..##/#...#/#...#",
    "O": ".###./#...#/#...#/#...#/#...#/#...#/.###.", "P": "####./#...#/#...#/####./#..../#..../#....",
    "Q": ".###./#...#/#...#/#...#/#.#.#/#..#./.##.#", "R": "####./#...#/#...#/####./#.#../#..#./#...#",
    "S": ".####/#..../#..../.###./....#/....#/####.", "T": "#####/..#../..#../..#../..#../..#../..#..",
    "U": "#...#/#...#/#...#/#...#/#...#/#...#/.###.", "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "W": "#...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.", "X": "#...#/#...#/.#.#./..#../.#.#./#...#/#...#",
    "Y": "#...#/#...#/.#.#./..#../..#../..#../..#..", "Z": "#####/....#/...#./..#../.#.../#..../#####",
    " ": "...../...../...../...../...../...../.....", ".": "...../...../...../...../...../.##../.##..",
    ",": "...../...../...../...../.##../..#../.#...", ":": "...../.##../.##../...../.##../.##../.....",
    "-": "...../...../...../#####/...../...../.....", "+": "...../..#../..#../#####/..#../..#../.....",
    "/": "....#/....#/...#./..#../.#.../#..../#....", "(": "...#./..#../.#.../.#.../.#.../..#../...#.",
    ")": ".#.../..#../...#./...#./...#./..#../.#...", "%": "##..#/##..#/...#./..#../.#.../#..##/#..##",
    "=": "...../...../#####/...../#####/...../.....", "_": "...../...../...../...../...../...../#####",
    "[": ".###./.#.../.#.../.#.../.#.../.#.../.###.", "]": ".###./...#./...#./...#./...#./...#./.###.",
    "@": ".###./#...#/#.###/#.#.#/#.###/#..../.####", "'": "..#../..#../...../...../...../...../.....",
    "<": "...#./..#../.#.../#..../.#.../..#../...#.", ">": ".#.../..#../...#./....#/...#./..#../.#...",
    "|": "..#../..#../..#../..#../..#../..#../..#..", "*": "...../#.#.#/.###./#####/.###./#.#.#/.....",
    "#": ".#.#./.#.#./#####/.#.#./#####/.#.#./.#.#.", "?": ".###./#...#/....#/...#./..#../...../..#..",
    "!": "..#../..#../..#../..#../..#../...../..#..", "&": ".##../#..#./#.#../.#.../#.#.#/#..#./.##.#",
}
_FONT = {c: np.array([[ch == "#" for ch in row] for row in g.split("/")], dtype=bool) for c, g in _GLYPHS.items()}

# Distinct line colours (RGB), cycled per series.
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207), (127, 127, 127), (188, 189, 34)]


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of text drawn at this scale."""
    return (6 * len(text) - 1) * scale if text else 0, 7 * scale


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 1,
              vertical: bool = False) -> None:
    """Draws text with its top-left corner at (x, y); vertical=True writes bottom-to-top (y = bottom)."""
    for i, ch in enumerate(str(text).upper()):
        g = _FONT.get(ch, _FONT["?"])
        if scale > 1:
            g = np.kron(g, np.ones((scale, scale), dtype=bool))
        if vertical:
            g = np.rot90(g)
            gx, gy = x, y - (i * 6 + 5) * scale
        else:
            gx, gy = x + i * 6 * scale, y
        h, w = g.shape
        y0, x0 = max(gy, 0), max(gx, 0)
        y1, x1 = min(gy + h, img.shape[0]), min(gx + w, img.shape[1])
        if y1 <= y0 or x1 <= x0:
            continue
        img[y0:y1, x0:x1][g[y0 - gy:y1 - gy, x0 - gx:x1 - gx]] = color


def draw_line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color, width: int = 1,
              dashed: bool = False) -> None:
    """Line segment from (x0, y0) to (x1, y1), `width` pixels thick."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    t = np.linspace(0.0, 1.0, n)
    xs = np.rint(x0 + (x1 - x0) * t).astype(int)
    ys = np.rint(y0 + (y1 - y0) * t).astype(int)
    if dashed:
        keep = (np.arange(n) // 4) % 2 == 0
        xs, ys = xs[keep], ys[keep]
    lo, hi = -(width // 2), width - width // 2
    for dy in range(lo, hi):
        for dx in range(lo, hi):
            xx, yy = xs + dx, ys + dy
            ok = (xx >= 0) & (xx < img.shape[1]) & (yy >= 0) & (yy < img.shape[0])
            img[yy[ok], xx[ok]] = color


def _fill(img, x0, y0, x1, y1, color):
    img[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = color


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 and a % 1000 == 0:
        return f"{v / 1000:g}K"
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.4g}"
    return f"{v:.3g}"


def line_chart(series: dict, title: str = "", xlabel: str = "", ylabel: str = "", logx: bool = False,
               width: int = 640, height: int = 420, hline: float | None = None) -> np.ndarray:
    """RGB uint8 image of a line chart. series: name -> (xs, ys) (NaN y values are skipped).
    logx: log2 x axis with ticks at the data's x values. hline: a dashed reference line at that y."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    pts = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for x, y in series.values()]
    allx = np.concatenate([p[0] for p in pts]) if pts else np.array([0.0, 1.0])
    ally = np.concatenate([p[1] for p in pts]) if pts else np.array([0.0, 1.0])
    if hline is not None:
        ally = np.append(ally, hline)
    ally = ally[np.isfinite(ally)]
    if ally.size == 0:
        ally = np.array([0.0, 1.0])
    if logx:
        allx = allx[allx > 0]
        if allx.size == 0:
            allx = np.array([1.0, 2.0])
    ylo, yhi = float(ally.min()), float(ally.max())
    pad = (yhi - ylo) * 0.06 or (abs(yhi) * 0.1 or 1.0)
    ylo, yhi = ylo - pad, yhi + pad
    yt = nice_ticks(ylo, yhi, 6)
    if yt:
        ylo, yhi = min(ylo, yt[0]), max(yhi, yt[-1])
    tx = (lambda v: math.log2(v)) if logx else (lambda v: v)
    xlo, xhi = tx(float(allx.min())), tx(float(allx.max()))
    if xhi <= xlo:
        xlo, xhi = xlo - 1, xhi + 1
    xpad = (xhi - xlo) * 0.04
    xlo, xhi = xlo - xpad, xhi + xpad

    ylab_w = max((text_size(fmt_tick(v))[0] for v in yt), default=10)
    left, right, top, bottom = 22 + ylab_w, 12, 30 if title else 12, 36
    legend_w = max((text_size(str(k))[0] for k in series), default=0) + 26 if series else 0
    right += legend_w
    pw, ph = width - left - right, height - top - bottom
    if pw < 20 or ph < 20:
        raise ValueError("chart is too small for its labels")

    def px(v):
        return left + (tx(v) - xlo) / (xhi - xlo) * (pw - 1)

    def py(v):
        return top + (yhi - v) / (yhi - ylo) * (ph - 1)

    grid, axis = (225, 225, 225), (60, 60, 60)
    for v in yt:
        y = int(round(py(v)))
        draw_line(img, left, y, left + pw - 1, y, grid)
        w, _ = text_size(fmt_tick(v))
        draw_text(img, left - 5 - w, y - 3, fmt_tick(v), axis)
    if logx:
        xticks = sorted(set(float(v) for v in allx))
    else:
        xticks = nice_ticks(float(allx.min()), float(allx.max()), 6)
    if logx and len(xticks) > 10:
        xticks = [2.0 ** k for k in range(math.ceil(xlo), math.floor(xhi) + 1)]
    for v in xticks:
        x = int(round(px(v)))
        if left <= x < left + pw:
            draw_line(img, x, top, x, top + ph - 1, grid)
            s = fmt_tick(v)
            draw_text(img, x - text_size(s)[0] // 2, top + ph + 5, s, axis)
    draw_line(img, left, top, left, top + ph - 1, axis)
    draw_line(img, left, top + ph - 1, left + pw - 1, top + ph - 1, axis)
    if hline is not None:
        y = int(round(py(hline)))
        draw_line(img, left, y, left + pw - 1, y, (90, 90, 90), dashed=True)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        col = PALETTE[i % len(PALETTE)]
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        ok = np.isfinite(ys) & (xs > 0 if logx else np.isfinite(xs))
        order = np.argsort(xs[ok])
        xv, yv = xs[ok][order], ys[ok][order]
        for a in range(len(xv) - 1):
            draw_line(img, px(xv[a]), py(yv[a]), px(xv[a + 1]), py(yv[a + 1]), col, width=2)
        for a in range(len(xv)):
            cx, cy = int(round(px(xv[a]))), int(round(py(yv[a])))
            _fill(img, cx - 2, cy - 2, cx + 3, cy + 3, col)
        ly = top + 4 + i * 12
        lx = left + pw + 8
        draw_line(img, lx, ly + 3, lx + 12, ly + 3, col, width=2)
        draw_text(img, lx + 16, ly, str(name), (30, 30, 30))
    if title:
        draw_text(img, left, 10, title, (0, 0, 0))
    if xlabel:
        draw_text(img, left + (pw - text_size(xlabel)[0]) // 2, height - 12, xlabel, axis)
    if ylabel:
        draw_text(img, 4, top + (ph + text_size(ylabel)[0]) // 2, ylabel, axis, vertical=True)
    return img


def grid(images: list[np.ndarray], cols: int = 2) -> np.ndarray:
    """Tiles equally sized chart images into rows of `cols` (white where a row is short)."""
    if not images:
        raise ValueError("no images")
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * h, min(cols, len(images)) * w, 3), 255, dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * h:r * h + im.shape[0], c * w:c * w + im.shape[1]] = im
    return out


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode_png(img))
    os.replace(tmp, path)
