"""A tiny PNG writer (numpy + zlib) and the KV-cache map drawn by `pytriattn generate --kv-map`."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray) -> bytes:
    """uint8 image (h, w) greyscale or (h, w, 3) RGB → PNG bytes (8-bit, no interlace, filter 0)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 2:
        colour, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        colour, channels = 2, 3
    else:
        raise ValueError(f"image must be (h, w) or (h, w, 3), got {img.shape}")
    h, w = img.shape[:2]
    if h < 1 or w < 1:
        raise ValueError("image must not be empty")
    rows = np.zeros((h, 1 + w * channels), dtype=np.uint8)  # each scanline: filter byte 0 + pixels
    rows[:, 1:] = img.reshape(h, w * channels)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def kv_map_image(positions: np.ndarray, n_past: int, row_height: int = 3, max_width: int = 4096) -> np.ndarray:
    """Heat map of what the cache holds: x = original position 0..n_past-1, one band of row_height pixels
    per (layer, KV head), a pixel lit when that position is kept (columns are binned when n_past >
    max_width: brightness = fraction kept). A grey line separates layers."""
    pos = np.asarray(positions)
    if pos.ndim != 3:
        raise ValueError("positions must be (n_layer, n_head_kv, max_live)")
    n_layer, n_kv, _ = pos.shape
    n_past = max(int(n_past), 1)
    width = min(n_past, max_width)
    kept = np.zeros((n_layer * n_kv, width), dtype=np.float64)
    counts = np.bincount((np.arange(n_past) * width) // n_past, minlength=width).astype(np.float64)
    for i, row in enumerate(pos.reshape(n_layer * n_kv, -1)):
        p = row[(row >= 0) & (row < n_past)]
        kept[i] = np.bincount((p.astype(np.int64) * width) // n_past, minlength=width)
    frac = kept / np.maximum(counts, 1.0)
    band = np.repeat(frac, row_height, axis=0)                        # (rows * row_height, width)
    img = np.zeros(band.shape + (3,), dtype=np.uint8)
    img[..., 0] = (40 + 215 * band).astype(np.uint8)                  # kept: warm yellow; evicted: dark blue
    img[..., 1] = (30 + 190 * band).astype(np.uint8)
    img[..., 2] = (70 - 30 * band).astype(np.uint8)
    sep = np.arange(n_kv * row_height, band.shape[0], n_kv * row_height)
    img[sep, :, :] = 128
    return img


def write_kv_map(path: str | os.PathLike, positions: np.ndarray, n_past: int) -> tuple[int, int]:
    """Writes the KV map PNG; returns (width, height)."""
    img = kv_map_image(positions, n_past)
    with open(path, "wb") as f:
        f.write(encode_png(img))
    return img.shape[1], img.shape[0]
