"""Window plans for images larger than the model: pure geometry, shared by the API (which predicts
a job's cost before admitting it) and the pipeline (which runs the windows with `ddnm.tiling`).

An output of H x W is covered by square windows of the model's native side n that overlap by
`overlap` pixels (the paper's Mask-Shift: n / 2). Along each axis the windows start at 0, s, 2s,
... (s = n - overlap) and the last one ends flush with the edge, so any size >= n is covered
without padding; a side shorter than n is padded to n (the `canvas`) and cropped back. Starts,
the stride and the window are multiples of `align` (the chain's downsampling factor), so every
window's observation is a whole block of y.

Mask-Shift restores the windows in row-major order, each after the earlier windows it overlaps
(`deps`); the windows whose dependencies are all finished form a `wave` and run together.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

Box = tuple[int, int, int, int]  # (top, bottom, left, right), half-open pixel ranges


@dataclass(frozen=True)
class TilePlan:
    """The windows of one output. rows / cols: the window starts along each axis."""

    height: int
    width: int
    window: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) restored before cropping: each side at least one window."""
        return max(self.height, self.window), max(self.width, self.window)

    @property
    def boxes(self) -> tuple[Box, ...]:
        """Window boxes in row-major order (index = position in this tuple)."""
        n = self.window
        return tuple((r, r + n, c, c + n) for r in self.rows for c in self.cols)

    @cached_property
    def deps(self) -> tuple[tuple[int, ...], ...]:
        """For each window, the earlier windows (row-major) it overlaps."""
        cols, boxes = len(self.cols), self.boxes
        found = []
        for k, box in enumerate(boxes):
            i, j = divmod(k, cols)
            near = (
                a * cols + b
                for a in range(max(0, i - 2), i + 1)
                for b in range(max(0, j - 2), min(cols, j + 3))
            )
            found.append(tuple(d for d in near if d < k and _overlap(boxes[d], box)))
        return tuple(found)

    @cached_property
    def waves(self) -> tuple[tuple[int, ...], ...]:
        """Windows grouped by the earliest step at which all their dependencies are finished."""
        level: list[int] = []
        for deps in self.deps:
            level.append(1 + max((level[d] for d in deps), default=-1))
        return tuple(tuple(k for k, v in enumerate(level) if v == w) for w in range(max(level) + 1))

    def summary(self) -> dict[str, int]:
        """What a job record keeps of the plan."""
        return {
            "window": self.window,
            "overlap": self.overlap,
            "windows": len(self.rows) * len(self.cols),
            "waves": len(self.waves),
        }


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def axis_starts(length: int, window: int, stride: int) -> tuple[int, ...]:
    """Window starts along one axis of `length`: 0, stride, ... and the last one flush."""
    if length <= window:
        return (0,)
    return (*range(0, length - window, stride), length - window)


def plan_tiles(height: int, width: int, window: int, overlap: int, align: int = 1) -> TilePlan:
    """The windows of an H x W output (H, W multiples of `align`); ValueError naming what to
    change when the window, overlap or alignment cannot work together."""
    if window % align:
        raise ValueError(
            f"the window side {window} is no multiple of the chain's downsampling factor {align}"
        )
    if not 0 <= overlap <= window // 2:
        raise ValueError(f"overlap must be in [0, {window // 2}] pixels, got {overlap}")
    overlap -= overlap % align  # whole blocks of y
    stride = window - overlap
    return TilePlan(
        height,
        width,
        window,
        overlap,
        axis_starts(max(height, window), window, stride),
        axis_starts(max(width, window), window, stride),
    )
