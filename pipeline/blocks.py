"""Block mapping: a NumPy function over the tiles of a survey, one Dask task per block of tiles.

A few lines around a NumPy function: :func:`map_tile_blocks` cuts a survey's tile grid
(:mod:`pipeline.tiling`) into *blocks* of whole tiles of about one Zarr chunk each, and gives
each block's pixels (its halo included, when tiles straddle chunks) to a function that returns
one row of numbers per tile. Each task reads its own pixel window straight from Zarr, so no
pixel travels between workers (DESIGN decisions 6 and 11). The result is a Dask array of tile
rows × tile columns × outputs, equal to the function applied to the whole array at once.

:func:`resolve_client` picks where the work runs (the given client, the default one, or local
threads) and :func:`compute_with_progress` / :func:`compute_tasks` run it with a progress bar.
:func:`store_blocks` writes such an array into Zarr arrays block by block: each task computes
its block and writes it, so the driver never holds the whole result and memory depends on the
block size and the number of workers, not on the number of tiles (DESIGN decision 11).
"""

from __future__ import annotations

import ctypes
import uuid
from typing import Any

import numpy as np

from pipeline.progress import progress_bar, wait_with_progress
from pipeline.tiling import TileGrid

# dask.array (~0.9 s) and distributed (~0.4 s) are imported inside the functions that use them:
# features and labels import this module, and the command line opens their stored groups to
# check its input before any work, so a refusal must not pay for them.

__all__ = ["map_tile_blocks", "resolve_client", "compute_with_progress", "compute_tasks", "store_blocks"]


_MALLOC_TUNED = False


def _reuse_freed_memory_in_worker() -> None:
    """In a Dask worker process, let glibc reuse freed memory instead of unmapping it at once.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's
    mmap threshold at 128 KiB: every temporary array of a tile batch (~1 MiB each) then gets
    fresh pages from the kernel, and the page faults cost more than the arithmetic (measured on
    one 1024² chunk: 72 ms of CPU, 43 of them in the kernel, against 27 ms once memory is
    reused). Raising both thresholds to 64 MiB keeps at most 64 MiB of freed memory around for
    reuse. Once per worker process (the setting is process-wide, so it also helps other stages'
    tasks there); never in the user's own process; a no-op where glibc is absent.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        from distributed import get_worker

        get_worker()  # ValueError outside a worker: leave the user's process alone
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (ImportError, ValueError, OSError, AttributeError):
        pass


def _read_and_apply(image, valid, window, func, ro, co, size, args) -> np.ndarray:
    """One task: read a pixel window (halo included) straight from Zarr, then apply ``func``."""
    _reuse_freed_memory_in_worker()
    r0, r1, c0, c1 = window
    block = np.asarray(image[:, r0:r1, c0:c1])
    mask = None if valid is None else np.asarray(valid[r0:r1, c0:c1])
    return func(block, mask, ro, co, size, *args)


def map_tile_blocks(
    func: Any,
    image: Any,
    valid: Any,
    grid: TileGrid,
    n_out: int,
    args: tuple = (),
    tiles_per_block: tuple[int, int] | None = None,
    name: str = "tile-blocks",
) -> Any:
    """Apply ``func`` to the tiles of ``image``, one Dask task per block of tiles.

    ``func(block, valid_block, row_offsets, col_offsets, size, *args)`` receives a block's
    pixels ``(bands, h, w)`` (NumPy), its valid mask ``(h, w)`` (or None) and the tile offsets
    inside it, and returns ``(n_block_rows, n_block_cols, n_out)`` float32. Each task gets its
    block's whole pixel window, including the halo from neighbouring chunks when tiles straddle
    them. Returns a Dask array ``(n_rows, n_cols, n_out)`` chunked by block; key names start
    with ``name`` (progress bars count those).

    ``image`` (bands, H, W) and ``valid`` (H, W, or None) are either Dask arrays (any
    chunking; blocks default to about one chunk) or Zarr arrays, which each task reads itself:
    one task per block and no pixels moving between workers (the store's path).
    """
    import dask
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    lazy = isinstance(image, da.Array)
    if tiles_per_block is None:
        chunks = image.chunks if lazy else (None, (image.chunks[1],), (image.chunks[2],))
        tiles_per_block = (max(1, chunks[1][0] // grid.stride), max(1, chunks[2][0] // grid.stride))
    blocks = grid.blocks(tiles_per_block)
    ro_all, co_all = grid.row_offsets, grid.col_offsets
    row_starts = sorted({b.rows.start for b in blocks})
    col_starts = sorted({b.cols.start for b in blocks})
    row_sizes = tuple(b.rows.stop - b.rows.start for b in blocks if b.cols.start == 0)
    col_sizes = tuple(b.cols.stop - b.cols.start for b in blocks if b.rows.start == 0)

    if not lazy:
        # a fresh token: the arrays' content may change under the same path (re-ingest), so
        # results must never be taken from an earlier computation on the cluster
        key = f"{name}-{uuid.uuid4().hex}"
        dsk = {}
        for b in blocks:
            w = b.window
            window = (w.row_off, w.row_off + w.height, w.col_off, w.col_off + w.width)
            ro, co = ro_all[b.rows] - w.row_off, co_all[b.cols] - w.col_off
            i, j = row_starts.index(b.rows.start), col_starts.index(b.cols.start)
            dsk[(key, i, j, 0)] = (_read_and_apply, image, valid, window, func, ro, co, grid.size, tuple(args))
        graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
        return da.Array(graph, key, (row_sizes, col_sizes, (n_out,)), dtype=np.float32)

    token = dask.base.tokenize(func, image, valid, grid.to_dict(), args, tiles_per_block)
    pieces: dict[tuple[int, int], Any] = {}
    for b in blocks:
        w = b.window
        ys, xs = slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width)
        ro, co = ro_all[b.rows] - w.row_off, co_all[b.cols] - w.col_off
        i, j = row_starts.index(b.rows.start), col_starts.index(b.cols.start)
        task = dask.delayed(func, pure=True)(
            image[:, ys, xs],
            None if valid is None else valid[ys, xs],
            ro,
            co,
            grid.size,
            *args,
            dask_key_name=(f"{name}-{token}", i, j),
        )
        pieces[(i, j)] = da.from_delayed(task, shape=(len(ro), len(co), n_out), dtype=np.float32)
    # depth-3 nesting: da.block joins the innermost lists along the last axis (the outputs)
    return da.block([[[pieces[(i, j)]] for j in range(len(col_starts))] for i in range(len(row_starts))])


def resolve_client(client: Any = None) -> Any:
    """``client`` if given, else the current default ``distributed`` client, else None (local threads)."""
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(array: Any, client: Any, desc: str, name: str) -> Any:
    """Compute ``array`` (from :func:`map_tile_blocks`) with a progress bar over its blocks.

    On ``client`` (see :func:`resolve_client`), or on local threads when it is None. With a
    client the result stays on the workers (a persisted Dask array); otherwise it is NumPy.
    """
    if client is not None:
        from distributed import futures_of

        persisted = client.persist(array)
        wait_with_progress(futures_of(persisted), desc, unit="block")
        return persisted
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(key, tuple) and str(key[0]).startswith(f"{name}-"):
                bar.update(1)

    with progress_bar(int(np.prod(array.numblocks)), desc, unit="block") as bar, _Progress():
        (result,) = dask.compute(array, scheduler="threads")
    return result


def compute_tasks(tasks: list, client: Any, desc: str) -> list:
    """Compute Dask delayed ``tasks`` with a progress bar, on ``client`` (see
    :func:`resolve_client`) or on local threads; their results, in order."""
    import dask

    client = resolve_client(client)
    if client is not None:
        return wait_with_progress(client.compute(tasks), desc, unit="block")
    with progress_bar(len(tasks), desc, unit="block") as bar:
        results = list(dask.compute(*tasks, scheduler="threads"))
        bar.update(len(tasks))
    return results


def _write_block(block: np.ndarray, writer: Any, targets: list, region: tuple[slice, slice]) -> OSError | None:
    """One task: write what ``writer`` makes of one computed block into each target array at ``region``.

    A full disk is returned, not raised (an expected outcome, reported once by the driver rather
    than logged as a crash by every worker), once zarr's other writes in flight have ended.
    """
    from pipeline.files import is_disk_full
    from pipeline.store import settle_pending_writes

    parts = writer(block)
    try:
        for target, part in zip(targets, parts):
            target[region] = part
    except OSError as exc:
        if is_disk_full(exc):
            settle_pending_writes()
            return OSError(exc.errno, exc.strerror, exc.filename)
        raise
    return None


def store_blocks(array: Any, writer: Any, targets: list, client: Any, desc: str) -> None:
    """Compute ``array`` (from :func:`map_tile_blocks`) block by block, writing each into ``targets``.

    ``writer(block) -> [part, ...]`` turns one block ``(n_rows, n_cols, n_out)`` into one part per
    target Zarr array (e.g. features and valid fraction), each indexed by the block's tile rows
    and columns first. The targets' chunks must be whole blocks, so that no two tasks write one
    Zarr chunk. Runs on ``client`` (see :func:`resolve_client`) or local threads; each write
    task returns nothing, so nothing is gathered. A full disk stops the writing and is raised
    as the ``OSError`` a task met (the caller's staging turns it into one message).
    """
    import dask

    row_starts = np.cumsum((0,) + array.chunks[0])
    col_starts = np.cumsum((0,) + array.chunks[1])
    tasks = []
    for i in range(len(array.chunks[0])):
        for j in range(len(array.chunks[1])):
            region = (slice(int(row_starts[i]), int(row_starts[i + 1])), slice(int(col_starts[j]), int(col_starts[j + 1])))
            tasks.append(dask.delayed(_write_block, pure=False)(array.blocks[i, j], writer, targets, region))
    client = resolve_client(client)
    if client is not None:
        results = wait_with_progress(client.compute(tasks), desc, unit="block", stop=lambda r: isinstance(r, OSError))
    else:
        results = compute_tasks(tasks, None, desc)
    for full in (r for r in results if isinstance(r, OSError)):
        raise full
