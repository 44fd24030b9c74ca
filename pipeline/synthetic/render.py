"""Rendering: the pixels of one block of one date, as a pure function of the scene.

The colour of a pixel is a function of the scene, the date and the pixel's *global* row and
column only. Pixel (row, col) of date k shows the scene at x = (col + 0.5) * pixel_size +
shift_x, likewise y (:meth:`DateConditions.shift`). :func:`render_block` paints, in layers:

1. land cover: forest where a slow zone field is high (crowns lit by the date's sun, shadows
   cast on open ground at its edge), a meadow margin, fields elsewhere (a rotated grid of
   parcels with wavy edges, each growing this year's crop), shrubs and wet meadow along
   channels;
2. water: lakes, then channels with noisy banks (darker where they are deeper);
3. objects: dams with their ponds, look-alikes (:mod:`pipeline.synthetic.draw`);
4. roads and tracks over everything (culverts carry streams under them), then buildings;
5. the sensor: haze, exposure, a brightness gradient, a colour tint and white noise hashed from
   the pixel's indices, rounded to uint8.

Texture comes from hashed noise (:mod:`pipeline.synthetic.noise`) and only element-wise
arithmetic and min/max reductions touch pixel arrays, so a block's bytes are the same whichever
block size or worker computed it.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.synthetic.draw import (
    Canvas,
    draw_building,
    draw_dam,
    draw_lake,
    draw_negative,
)
from pipeline.synthetic.noise import (
    F32,
    crowns,
    hash_ints,
    interp_lattice,
    mix,
    unit,
    value_noise,
)
from pipeline.synthetic.objects import DateConditions, Scene
from pipeline.synthetic.palette import DN_SCALE, FIELD_CLASSES, HAZE, PALETTE, colour
from pipeline.synthetic.raster import blend, polyline_field, soft

__all__ = ["STRIP", "render_block"]

STRIP = 256  # rows rendered at once: keeps the ~40 temporaries of a strip in cache


def render_block(scene: Scene, date_index: int, row0: int, col0: int, height: int, width: int, bands: int = 4) -> np.ndarray:
    """Pixels (bands, height, width) uint8 of date ``date_index`` at rows row0.., cols col0...

    Bands are red, green, blue (and nir if ``bands == 4``). A pure function of its arguments:
    any tiling of the image into blocks gives the same pixels (so the block is rendered in
    strips of STRIP rows, for memory and cache, without changing a byte).
    """
    out = np.empty((bands, height, width), np.uint8)
    for r in range(0, height, STRIP):
        h = min(STRIP, height - r)
        out[:, r : r + h] = _render(scene, date_index, row0 + r, col0, h, width, bands)
    return out


def _render(scene: Scene, date_index: int, row0: int, col0: int, height: int, width: int, bands: int) -> np.ndarray:
    """One strip: the layers of the module doc, in order."""
    cond = scene.conditions[date_index]
    shift_x, shift_y = cond.shift(scene.pixel_size)
    cols = np.arange(col0, col0 + width)
    rows = np.arange(row0, row0 + height)
    xs = (cols + 0.5) * scene.pixel_size + shift_x  # (W,) scene metres
    ys = (rows + 0.5) * scene.pixel_size + shift_y  # (H,)
    pal = {name: colour(name, cond.greenness) for name in PALETTE}
    coarse = value_noise(xs, ys, 45.0, scene.seeds["texture"])  # (H, W) patchiness, field warp
    fine = value_noise(xs, ys, 2.5, scene.seeds["texture"] + 3)  # banks and asphalt

    cv = Canvas(_land_cover(scene, cond, xs, ys, coarse, pal), xs, ys, pal, scene.pixel_size, cond)
    for lake in scene.objects_in("lakes", xs, ys):
        draw_lake(cv, lake, scene.seeds["shore"])
    stream_alpha = _draw_channels(cv, scene, coarse, fine)
    for dam in scene.objects_in("dams", xs, ys):
        draw_dam(cv, dam, date_index, stream_alpha)
    for neg in scene.objects_in("negatives", xs, ys):
        draw_negative(cv, neg)
    _draw_roads(cv, scene, fine)
    for bld in scene.objects_in("buildings", xs, ys):
        draw_building(cv, bld)
    return _sensor(cv.C, scene, cond, date_index, rows, cols, xs, ys, bands)


# --- land cover -----------------------------------------------------------------------------


def _land_cover(scene: Scene, cond: DateConditions, xs: np.ndarray, ys: np.ndarray, coarse: np.ndarray, pal) -> np.ndarray:
    """Colours (4, H, W) of the ground: forest, meadow, fields, riparian shrub and wet meadow.

    Each pixel gets one land-cover class (a row of ``cover``) and a brightness factor for its
    texture; later classes in the list below override earlier ones where they apply.
    """
    sd = scene.seeds
    sun_len = math.hypot(*cond.sun)
    to_sun = (-cond.sun[0] / sun_len, -cond.sun[1] / sun_len)
    zone = value_noise(xs, ys, 700.0, sd["zone"]) * F32(0.65) + value_noise(xs, ys, 230.0, sd["zone"] + 1) * F32(0.35)
    c1 = value_noise(xs, ys, 3.0, sd["canopy"])  # grass and shrub texture
    c2 = value_noise(xs, ys, 8.0, sd["canopy"] + 1)
    canopy = crowns(xs, ys, sd["canopy"] + 2, to_sun) * (F32(0.85) + F32(0.3) * c2)

    dist_stream = _distance_to_channels(scene, xs, ys)
    rip_noise = value_noise(xs, ys, 60.0, sd["rip"])
    # The edge follows the crowns (canopy ~0.4 in gaps, ~1.2 on tops), not the noise lattice.
    forest = zone + F32(0.05) * (c2 - F32(0.5)) + F32(0.02) * (canopy - F32(0.9)) > F32(0.52)
    # Forest edges cast shadows on open ground: is there forest ~18 m tall towards the sun?
    hx, hy = cond.sun[0] * 18.0, cond.sun[1] * 18.0
    zs = value_noise(xs - hx, ys - hy, 700.0, sd["zone"]) * F32(0.65) + value_noise(xs - hx, ys - hy, 230.0, sd["zone"] + 1) * F32(0.35)
    edge_shadow = (zs + F32(0.05) * (value_noise(xs - hx, ys - hy, 8.0, sd["canopy"] + 1) - F32(0.5)) > F32(0.52)) & ~forest
    old_field = zone > F32(0.49)  # a meadow margin between forest and cropland
    conifer = zone > F32(0.62) + F32(0.1) * coarse
    shrub_w = F32(10.0) + F32(30.0) * rip_noise
    open_w = F32(1.0) + F32(10.0) * rip_noise * rip_noise
    riparian = dist_stream < shrub_w
    wet = dist_stream < open_w

    klass, field_tex, margin = _fields(scene, cond, xs, ys, coarse)
    cover = np.stack([pal[name] for name in FIELD_CLASSES + ("meadow", "meadow", "shrub", "forest", "conifer", "wet_meadow")])
    MARGIN, OLD_FIELD, SHRUB, FOREST, CONIFER, WET = range(8, 14)
    shrub_fac = F32(0.5) + F32(0.5) * canopy
    cls = np.where(margin, np.uint8(MARGIN), klass)
    fac = np.where(margin, F32(0.8) + F32(0.3) * c1, field_tex)
    np.copyto(cls, np.uint8(OLD_FIELD), where=old_field)
    np.copyto(fac, F32(0.85) + F32(0.15) * c1 + F32(0.1) * coarse, where=old_field)
    np.copyto(cls, np.uint8(SHRUB), where=riparian)
    np.copyto(fac, shrub_fac, where=riparian)
    np.copyto(cls, np.where(conifer, np.uint8(CONIFER), np.uint8(FOREST)), where=forest)
    np.copyto(fac, canopy, where=forest)
    wooded = forest | riparian
    np.copyto(cls, np.where(wooded, np.uint8(WET), np.uint8(SHRUB)), where=wet)
    np.copyto(fac, np.where(wooded, F32(0.85) + F32(0.3) * c2, shrub_fac), where=wet)

    C = np.empty((4, len(ys), len(xs)), F32)
    for b in range(4):
        np.multiply(np.take(cover[:, b], cls), fac, out=C[b])
        C[b][edge_shadow] *= F32(0.55)
    return C


def _distance_to_channels(scene: Scene, xs: np.ndarray, ys: np.ndarray, spacing: float = 8.0) -> np.ndarray:
    """Distance (H, W) in m to the nearest channel, capped at 80, for riparian strips.

    Computed on a ``spacing``-m lattice and interpolated: smooth, and cheap at any pixel size.
    """
    lx0, ly0 = math.floor(xs[0] / spacing), math.floor(ys[0] / spacing)
    lx = np.arange(lx0, math.floor(xs[-1] / spacing) + 2) * spacing
    ly = np.arange(ly0, math.floor(ys[-1] / spacing) + 2) * spacing
    _, dl = polyline_field(scene.water, lx, ly, reach=80.0)
    return interp_lattice(dl, lx0, ly0, xs, ys, spacing)


def _fields(scene: Scene, cond: DateConditions, xs: np.ndarray, ys: np.ndarray, coarse: np.ndarray):
    """Field parcels: class (H, W) uint8 (index into FIELD_CLASSES), texture factor (H, W), margin mask.

    A rotated grid of strips ``PW`` m wide, cut into parcels of varying length; three parcels in
    four are split in two; each sub-parcel's crop is hashed from the date's crop seed (it
    changes when the year does), with drill rows along or across it.
    """
    sd = scene.seeds
    ca, sa = scene.field_angle
    PW, PH = scene.field_size
    X = xs.astype(F32)[None, :]
    Y = ys.astype(F32)[:, None]
    warp = (coarse - F32(0.5)) * F32(14.0)
    u = X * F32(ca) + Y * F32(sa) + warp
    v = Y * F32(ca) - X * F32(sa) - warp
    fu = u / F32(PW)
    pu = np.floor(fu)
    fu -= pu
    pu = pu.astype(np.int64)
    # Per-strip and per-parcel values come from small tables over the block's parcel indices
    # (hashing the few indices once, then gathering), not from a hash per pixel.
    pu0 = int(pu.min())
    pu_range = np.arange(pu0, int(pu.max()) + 1)
    strip = hash_ints(pu_range, np.int64(7), sd["field"])
    jpu = pu - pu0
    off = (unit(strip) * F32(PH))[jpu]
    ph_strip = (F32(PH) * (F32(0.55) + F32(0.9) * unit(mix(strip))))[jpu]  # parcel length varies by strip
    fv = (v + off) / ph_strip
    pv = np.floor(fv)
    fv -= pv
    pv = pv.astype(np.int64)
    pv0 = int(pv.min())
    pv_range = np.arange(pv0, int(pv.max()) + 1)
    n_pv = len(pv_range)
    split_tab = hash_ints(pu_range[:, None], pv_range[None, :], sd["field"] + 1)  # (n_pu, n_pv)
    cell = jpu * n_pv + (pv - pv0)
    split = split_tab.ravel()[cell]
    cut = F32(0.3) + F32(0.4) * unit(split)
    is_split = (split & np.uint32(3)) != 0  # three parcels in four are split in two
    half = (fu > cut) & is_split
    sub = np.stack([pu_range * 2, pu_range * 2 + 1], axis=1).ravel()  # (2 n_pu,) sub-parcel ids
    ph_tab = hash_ints(sub[:, None], pv_range[None, :], cond.crop_seed ^ sd["field"]).ravel()
    parcel = (jpu * 2 + half) * n_pv + (pv - pv0)
    klass_tab = (ph_tab & np.uint32(7)).astype(np.uint8)
    klass = klass_tab[parcel]
    along = ((ph_tab >> np.uint32(3)) & np.uint32(1)).astype(bool)[parcel]
    inv_period = (F32(1.0) / (F32(3.0) + F32(3.0) * unit(mix(ph_tab))))[parcel]
    amp_tab = np.where(np.isin(klass_tab, (2, 3, 7)), F32(0.05), F32(0.16)).astype(F32)
    stripe_coord = np.where(along, u, v) * inv_period
    stripe = np.abs(stripe_coord - np.floor(stripe_coord) - F32(0.5)) * F32(2.0)  # triangle 0..1
    field_tex = (F32(1.0) + amp_tab[parcel] * (stripe - F32(0.5))) * (F32(0.9) + F32(0.2) * coarse)
    edge_u = np.minimum(np.minimum(fu, F32(1.0) - fu), np.where(is_split, np.abs(fu - cut), F32(1.0)))
    edge = np.minimum(edge_u * F32(PW), np.minimum(fv, F32(1.0) - fv) * ph_strip)
    return klass, field_tex, edge < F32(2.5)


# --- water, roads, sensor -------------------------------------------------------------------


def _draw_channels(cv: Canvas, scene: Scene, coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Water where the distance to a channel is below its half-width (noisy banks), a darker wet
    bank beside it; returns the channels' coverage (H, W), which a drained pond redraws."""
    pal, p = cv.pal, cv.pixel_size
    q, dstr = polyline_field(scene.water, cv.xs, cv.ys, reach=4.0)
    q_eff = q + F32(0.18) * (fine - F32(0.5))
    # Distance inside the bank (m): half - d = d (1 - q) / q, written to stay finite at q = 0.
    inside = np.where(q_eff < F32(1.0), (F32(1.0) - q_eff) * F32(4.0), (F32(1.0) - q_eff) * dstr / np.maximum(q_eff, F32(1e-3)))
    bank = soft(np.minimum(F32(1.6) - q_eff, (F32(2.5) - dstr)), p) * F32(0.6)
    blend(cv.C, bank, pal["bank"])
    stream_alpha = soft(inside, p)
    # Deeper, darker water away from the banks: wide pools look like ponds, riffles do not.
    depth = np.clip(inside * F32(0.22), F32(0.0), F32(1.0))[None]
    stream_col = (pal["stream"][:, None, None] * (F32(1.0) - depth) + pal["pond"][:, None, None] * depth) * (
        F32(0.9) + F32(0.25) * coarse
    )[None]
    blend(cv.C, stream_alpha, stream_col)
    return stream_alpha


def _draw_roads(cv: Canvas, scene: Scene, fine: np.ndarray) -> None:
    """Asphalt roads with gravel shoulders, and gravel tracks with a grassy middle strip."""
    pal, p = cv.pal, cv.pixel_size
    qr, _ = polyline_field(scene.roads, cv.xs, cv.ys, reach=1.0)
    blend(cv.C, soft((F32(1.45) - qr) * F32(3.4), p), pal["gravel"])
    asphalt = pal["asphalt"][:, None, None] * (F32(0.94) + F32(0.12) * fine)[None]
    blend(cv.C, soft((F32(1.0) - qr) * F32(3.4), p), asphalt)
    qt, _ = polyline_field(scene.tracks, cv.xs, cv.ys, reach=1.0)
    blend(cv.C, soft((F32(1.0) - qt) * F32(2.0), p), pal["gravel"] * F32(0.95))
    blend(cv.C, soft((F32(0.22) - qt) * F32(2.0), p) * F32(0.6), pal["meadow"])


def _sensor(C: np.ndarray, scene: Scene, cond: DateConditions, date_index: int, rows, cols, xs, ys, bands: int) -> np.ndarray:
    """Digital numbers (bands, H, W) uint8: haze, exposure, gradient, tint, white noise of +-2.5 DN."""
    S = scene.extent
    gx, gy = cond.gradient
    illum = (F32(1.0) + F32(gx) * ((xs / S) - 0.5).astype(F32))[None, :] + (F32(gy) * ((ys / S) - 0.5).astype(F32))[:, None]
    noise = hash_ints(cols[None, :], rows[:, None], cond.noise_seed ^ date_index)
    out = np.empty((bands, len(ys), len(xs)), np.uint8)
    for b in range(bands):
        scale = F32(DN_SCALE * cond.gain * cond.tint[b])
        dn = (C[b] + F32(HAZE[b])) * illum * scale
        byte = ((noise >> np.uint32(8 * b)) & np.uint32(255)).astype(F32)
        dn += (byte - F32(127.5)) * F32(2.5 / 127.5)
        np.clip(dn, F32(0.0), F32(255.0), out=dn)
        out[b] = np.floor(dn + F32(0.5)).astype(np.uint8)
    return out
