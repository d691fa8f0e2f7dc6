"""Checks on figures: what was drawn (matplotlib objects) and what was saved (PNG pixels)."""
import numpy as np
from matplotlib.image import imread


def png_pixels(path) -> np.ndarray:
    """RGB(A) floats in [0, 1], [H, W, C]; asserts the image is not blank (some ink, many colours)."""
    img = imread(path)
    rgb = img[..., :3].reshape(-1, 3)
    ink = (rgb.min(axis=1) < 0.8).mean()  # share of pixels clearly darker than white
    assert ink > 0.01, (path, ink)
    assert len(np.unique(np.round(rgb * 255), axis=0)) > 16, path  # lines, text and fills, not a flat colour
    return img


def assert_saved(fig, path, dpi: int) -> None:
    """The PNG at ``path`` is ``fig`` at ``dpi``: width x height in pixels = inches x dpi."""
    height, width = png_pixels(path).shape[:2]
    w_in, h_in = fig.get_size_inches()
    assert abs(width - w_in * dpi) <= 1 and abs(height - h_in * dpi) <= 1, (path, width, height)


def visible_axes(fig) -> list:
    """Plot panels (visible axes that are not colour bars)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def data_lines(ax) -> list:
    """Lines that carry data (a legend label), not reference lines such as ``axhline``."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]
