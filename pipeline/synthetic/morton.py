"""The canonical write order: Morton (Z) order of a survey file's 512-px tiles.

A GeoTIFF's bytes depend on the order in which its tiles are written. The synthetic surveys
are rendered in *blocks* of :data:`TILE` x 2**k pixels and written in one order that every
block size shares: the Z-order walk of the tiles. A block is an aligned group of 2**k x 2**k
tiles, and the Z-order walk visits every such group as one contiguous run, so writing the
blocks in Z order, each block's tiles in Z order, gives the same tile sequence -- hence the
same file -- for every block size and worker count.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError

__all__ = ["TILE", "morton_code", "morton_blocks", "tile_order", "check_block"]

TILE = 512  # internal GeoTIFF tile edge (px); blocks are 512 * 2**k so Morton order is shared
MAX_BLOCK = 8192


def morton_code(r: int, c: int) -> int:
    """The Z-order index of cell (row, col): the bits of row and col interleaved (col lowest)."""
    code = 0
    for i in range(max(r.bit_length(), c.bit_length())):
        code |= ((c >> i) & 1) << (2 * i) | ((r >> i) & 1) << (2 * i + 1)
    return code


def morton_blocks(size: int, block: int) -> list[tuple[int, int, int, int]]:
    """Blocks (row0, col0, height, width) of a size x size image in Morton (Z) order.

    With ``block`` = TILE * 2**k the blocks are aligned groups of 2**k x 2**k tiles, and a
    Z-order walk visits every such group as one contiguous run of the global tile walk: writing
    each block's tiles in Z order gives the same tile sequence -- hence the same file -- for
    every block size. Edge blocks are cut to the image.
    """
    n = -(-size // block)
    cells = sorted(((r, c) for r in range(n) for c in range(n)), key=lambda rc: morton_code(*rc))
    return [(r * block, c * block, min(block, size - r * block), min(block, size - c * block)) for r, c in cells]


def tile_order(h: int, w: int) -> list[tuple[int, int]]:
    """Offsets (row, col) in pixels of the TILE x TILE tiles of an h x w block, in Morton order."""
    tiles = [(r, c) for r in range(-(-h // TILE)) for c in range(-(-w // TILE))]
    return [(r * TILE, c * TILE) for r, c in sorted(tiles, key=lambda rc: morton_code(*rc))]


def check_block(block: int) -> None:
    """Raise :class:`InputError` unless ``block`` is TILE * 2**k px, at most MAX_BLOCK."""
    ok = isinstance(block, (int, np.integer)) and block >= TILE and block % TILE == 0 and ((block // TILE) & (block // TILE - 1)) == 0
    if not ok or block > MAX_BLOCK:
        raise InputError(
            f"--block {block!r} is not one of 512, 1024, 2048, 4096, 8192: blocks must be whole "
            f"groups of the file's 512-px tiles in powers of two so that every block size writes "
            f"the same bytes"
        )
