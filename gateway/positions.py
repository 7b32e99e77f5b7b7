"""Every prompt token's (t, h, w) rotary position for GLM-4.1V's 3-D mRoPE.

A port of transformers' ``Glm4vModel.get_rope_index`` for images: a run of text tokens advances
all three axes together, one per token; an image's tokens (its grid after the 2x2 merge, row by
row) take t = start + frame, h = start + row, w = start + column, and the next token starts at
start + max(rows, columns). Generated tokens continue from the largest position + 1, which the
decoder takes from the prompt's positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.chat import Placeholder

Grid = tuple[int, int, int]  # (t, h, w) in patches, as the image processor reports image_grid_thw


def mrope_positions(
    length: int, images: Sequence[tuple[Placeholder, Grid]], merge_size: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Rows t, h, w for a prompt of ``length`` tokens whose images sit at the placeholders."""
    rows: tuple[list[int], list[int], list[int]] = ([], [], [])
    position = 0
    cursor = 0

    def text_until(end: int) -> None:
        nonlocal position, cursor
        for row in rows:
            row.extend(range(position, position + end - cursor))
        position += end - cursor
        cursor = end

    for placeholder, (t, h, w) in sorted(images, key=lambda item: item[0].offset):
        text_until(placeholder.offset)
        grid_h, grid_w = h // merge_size, w // merge_size
        if placeholder.length != t * grid_h * grid_w:
            raise ValueError(
                f"an image of grid {(t, h, w)} has {t * grid_h * grid_w} tokens after the "
                f"{merge_size}x{merge_size} merge, its placeholder {placeholder.length}"
            )
        for frame in range(t):
            for row in range(grid_h):
                rows[0].extend([position + frame] * grid_w)
                rows[1].extend([position + row] * grid_w)
                rows[2].extend(range(position, position + grid_w))
        position += max(grid_h, grid_w)
        cursor = placeholder.offset + placeholder.length
    text_until(length)
    return tuple(rows[0]), tuple(rows[1]), tuple(rows[2])
