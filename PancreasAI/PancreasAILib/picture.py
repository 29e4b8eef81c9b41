"""What a picture of the patient carries so that a radiologist can read it: which way is which
(orientation letters on the edges, from the voxel grid's real directions), how big things are
(a scale bar from the displayed pixels' size in mm) and what colours mean (a colour bar).

The geometry is pure (`direction_letters`, `PixelGeometry`, `cut_geometry`, `scale_bar`); the
`draw_*` functions put it on a Pillow picture.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

_POSITIVE_LETTERS = "RAS"  # RAS: x runs to the patient's Right, y Anterior, z Superior
_NEGATIVE_LETTERS = "LPI"
#: A direction that leans at least this much (sin 10 degrees) towards a second patient axis
#: names it too ("RA"), so an oblique view says so; below, the view reads as straight.
OBLIQUE_COMPONENT = float(np.sin(np.radians(10.0)))
#: Lengths a scale bar may have, mm (1, 2 and 5 cm read at a glance).
SCALE_BAR_LENGTHS_MM = (5.0, 10.0, 20.0, 50.0, 100.0)

WHITE = (255, 255, 255)
EDGE_LETTER_COLOUR = (255, 220, 120)


def direction_letters(direction_ras: Sequence[float]) -> str:
    """Patient direction(s) a RAS vector points to, the largest component first:
    (1, 0, 0) -> 'R', (0, -1, 0) -> 'P', 30 degrees from R towards A -> 'RA'."""
    direction = np.asarray(direction_ras, dtype=np.float64)
    length = float(np.linalg.norm(direction))
    if not length > 0:
        raise ValueError("a direction needs a non-zero vector")
    direction = direction / length
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    return "".join((_POSITIVE_LETTERS if direction[axis] > 0 else _NEGATIVE_LETTERS)[axis]
                   for axis in order if abs(direction[axis]) >= OBLIQUE_COMPONENT)


@dataclass(frozen=True)
class EdgeLabels:
    """The patient direction each edge of a picture faces."""

    left: str
    right: str
    top: str
    bottom: str


@dataclass(frozen=True, eq=False)  # eq would compare arrays (ambiguous truth value)
class PixelGeometry:
    """How a 2D picture lies in the patient: RAS mm vectors from one pixel to the next going
    down a column (row_step_ras) and going right along a row (column_step_ras)."""

    row_step_ras: np.ndarray
    column_step_ras: np.ndarray

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """(row, column) pixel size in mm: the height and the width of one pixel."""
        return float(np.linalg.norm(self.row_step_ras)), float(np.linalg.norm(self.column_step_ras))

    def edge_labels(self) -> EdgeLabels:
        rows, columns = np.asarray(self.row_step_ras), np.asarray(self.column_step_ras)
        return EdgeLabels(left=direction_letters(-columns), right=direction_letters(columns),
                          top=direction_letters(-rows), bottom=direction_letters(rows))

    def resized(self, shape: Sequence[int], new_shape: Sequence[int]) -> "PixelGeometry":
        """The geometry of this picture, (rows, columns) `shape`, resized to `new_shape` (each
        new pixel covers shape / new_shape old ones, as Pillow's resize and np.repeat do)."""
        return PixelGeometry(np.asarray(self.row_step_ras) * (shape[0] / new_shape[0]),
                             np.asarray(self.column_step_ras) * (shape[1] / new_shape[1]))


def cut_geometry(ijk_to_ras: np.ndarray, index: tuple) -> PixelGeometry:
    """Geometry of `array[index]` for a (K, J, I) array with this IJK-to-RAS: `index` holds one
    integer and two slices of step 1 or -1 (-1 turns that direction round), in (k, j, i) order.

    The picture's rows follow the first sliced axis, its columns the second, as numpy does.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    steps = []
    for array_axis, item in enumerate(index):
        if isinstance(item, slice):
            if item.step not in (None, 1, -1):
                raise ValueError("a cut keeps every voxel: slice steps of 1 or -1 only")
            sign = -1.0 if item.step == -1 else 1.0
            steps.append(sign * matrix[:3, 2 - array_axis])  # array axis 0 is voxel axis k
    if len(index) != 3 or len(steps) != 2:
        raise ValueError("a cut takes one integer and two slices, in (k, j, i) order")
    return PixelGeometry(steps[0], steps[1])


def scale_bar(mm_per_pixel: float, max_pixels: float) -> Optional[tuple[float, int]]:
    """(mm, pixels) of the longest bar of SCALE_BAR_LENGTHS_MM that fits in max_pixels, for
    pixels of mm_per_pixel along the bar; None when even the shortest does not fit."""
    fitting = [mm for mm in SCALE_BAR_LENGTHS_MM if mm / mm_per_pixel <= max_pixels]
    if not fitting:
        return None
    mm = max(fitting)
    return mm, int(round(mm / mm_per_pixel))


def length_text(mm: float) -> str:
    """5 -> '5 mm', 10 -> '1 cm', 50 -> '5 cm'."""
    if mm >= 10.0:
        return f"{mm / 10.0:g} cm"
    return f"{mm:g} mm"


def slice_position_text(center_ras: Sequence[float], normal_ras: Sequence[float]) -> str:
    """Where a slice lies along the patient axis its normal points to most, as a viewer's slice
    offset reads: 'S -12.5 mm' is 12.5 mm below RAS 0 (letters R, A or S; negative: L, P, I)."""
    axis = int(np.argmax(np.abs(np.asarray(normal_ras, dtype=np.float64))))
    return f"{_POSITIVE_LETTERS[axis]} {float(center_ras[axis]):.1f} mm"


# --- on a Pillow picture ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def label_font(size: int):
    """DejaVu Sans at `size` pixels: matplotlib's copy when matplotlib is installed (the same
    file everywhere, so pictures do not change with the system's fonts), else Pillow's own."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        dejavu = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if dejavu.is_file():
            return ImageFont.truetype(str(dejavu), size)
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow before 10.1: one bitmap size only
        return ImageFont.load_default()


def text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def draw_text(draw, xy: tuple[float, float], text: str, font, fill=WHITE, anchor: str = "la") -> None:
    """Text with a thin black outline, legible over any grey level or heat colour."""
    draw.text(xy, text, font=font, fill=fill, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def draw_edge_labels(draw, box: tuple[int, int, int, int], labels: EdgeLabels, font, margin: int) -> None:
    """The four letters centred on the edges of box (left, top, right, bottom), each in the
    `margin` pixels outside it."""
    left, top, right, bottom = box
    middle_x, middle_y = (left + right) / 2, (top + bottom) / 2
    half = margin / 2
    for text, xy in ((labels.left, (left - half, middle_y)), (labels.right, (right + half, middle_y)),
                     (labels.top, (middle_x, top - half)), (labels.bottom, (middle_x, bottom + half))):
        draw_text(draw, xy, text, font, fill=EDGE_LETTER_COLOUR, anchor="mm")


def draw_scale_bar(draw, origin: tuple[int, int], geometry: PixelGeometry, max_pixels: float, font) -> None:
    """A horizontal bar from `origin` (its left end) to the right, its length written after it.

    When the pixels are not square (height and width differ by more than 2 %) a vertical arm of
    the same length in mm rises from the left end, drawn with the pixel height; the length is
    then chosen so that both arms fit in max_pixels.
    """
    row_mm, column_mm = geometry.pixel_mm
    square = abs(row_mm - column_mm) <= 0.02 * column_mm
    bar = scale_bar(column_mm if square else min(row_mm, column_mm), max_pixels)
    if bar is None:
        return
    mm = bar[0]
    width = int(round(mm / column_mm))
    x, y = origin
    draw.rectangle((x - 1, y - 1, x + width + 1, y + 2), fill=(0, 0, 0))
    if not square:
        height = int(round(mm / row_mm))
        draw.rectangle((x - 1, y - height - 1, x + 2, y + 2), fill=(0, 0, 0))
        draw.rectangle((x, y - height, x + 1, y + 1), fill=WHITE)
    draw.rectangle((x, y, x + width, y + 1), fill=WHITE)
    draw_text(draw, (x + width + 5, y + 1), length_text(mm), font, anchor="ls")


def draw_colour_bar(canvas, box: tuple[int, int, int, int], table: np.ndarray, title: str,
                    low_text: str, high_text: str, font) -> None:
    """A horizontal colour bar filling box (left, top, right, bottom) with `table` ((N, 3) uint8,
    entry 0 at the left), `title` above it and the meaning of its two ends below them."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = box
    width, height = right - left, bottom - top
    positions = np.round(np.linspace(0, len(table) - 1, width)).astype(int)
    strip = np.repeat(np.asarray(table, np.uint8)[positions][None], height, axis=0)
    canvas.paste(Image.fromarray(strip), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left - 1, top - 1, right, bottom), outline=(160, 160, 160))
    draw_text(draw, ((left + right) / 2, top - 3), title, font, anchor="ms")
    draw_text(draw, (left, bottom + 3), low_text, font, anchor="la")
    draw_text(draw, (right, bottom + 3), high_text, font, anchor="ra")
