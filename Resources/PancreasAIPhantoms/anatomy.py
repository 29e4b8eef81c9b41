"""Synthetic upper-abdomen anatomy shared by the CT and MR phantoms.

The anatomy is drawn in millimetres in a body frame: ``u`` toward the patient's left,
``v`` toward posterior, ``w`` toward superior, with ``u = v = 0`` at the centre of the
body outline and ``w = 0`` at the level of the pancreatic body. ``sample_anatomy`` draws
a patient's sizes and positions; ``paint_abdomen`` paints them in anatomical order onto a
``Canvas`` whose tissue table (CT attenuation or MR signal) the caller provides.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
from scipy.ndimage import gaussian_filter1d

from .canvas import (
    Canvas,
    Grid,
    Vec3,
    coverage,
    ellipsoid_box,
    ellipsoid_sdf,
    smooth_noise,
    smooth_path,
    tube_sdf,
    values_in_box,
)


# ---------------------------------------------------------------------------------------
# Anatomy: random parameters
# ---------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """Random but plausible sizes and positions (mm, body frame) of one synthetic patient."""

    body_semi: tuple[float, float, float]  # half width, half depth anterior, half depth posterior
    subcutaneous_fat: float
    muscle_wall: float
    vertebra_centre_v: float
    vertebra_semi: tuple[float, float]
    vertebra_period: float
    vertebra_phase: float
    aorta: tuple[float, float, float]  # u, v, radius
    ivc: tuple[float, float, float, float]  # u, v, semi u, semi v
    kidneys: list[tuple[Vec3, Vec3, float]]  # centre, semi axes, axial angle (deg)
    liver_right: tuple[Vec3, Vec3]
    liver_left: tuple[Vec3, Vec3]
    liver_medial_limit: float  # u of the liver's medial edge at w = 0 (it moves right below)
    spleen: tuple[Vec3, Vec3, float]
    stomach: tuple[Vec3, Vec3, float]
    stomach_fill: float  # fraction of stomach depth filled with fluid (rest is gas)
    gallbladder: tuple[Vec3, Vec3, float] | None
    splenic_vein: np.ndarray  # (M, 3) path from portal confluence to splenic hilum
    portal_vein: np.ndarray
    smv_sma_top: float  # w where the SMV joins the confluence
    sma: tuple[float, float]
    smv: tuple[float, float]
    left_renal_vein: np.ndarray
    pancreas_path: np.ndarray  # (M, 3) centreline, head (inferior, right) to tail
    pancreas_radius: np.ndarray  # (M,)
    uncinate_path: np.ndarray
    uncinate_radius: np.ndarray
    duodenum_path: np.ndarray
    duodenum_radius: float
    colon_paths: list[np.ndarray]
    colon_radius: float
    bowel_paths: list[np.ndarray]
    bowel_radius: float
    liver_vessels: list[np.ndarray] = field(default_factory=list)

    @property
    def cavity_semi(self) -> tuple[float, float, float]:
        """Half width, half depth anterior and posterior of the abdominal cavity (mm)."""
        inset = self.subcutaneous_fat + self.muscle_wall
        return tuple(s - inset for s in self.body_semi)  # type: ignore[return-value]


def sample_anatomy(rng: np.random.Generator, body_half_width: tuple[float, float] = (140.0, 180.0)) -> Anatomy:
    """Draw one synthetic patient: every size and position varies with ``rng``."""
    a = rng.uniform(*body_half_width)
    habitus = a / 160.0  # how much bigger than an average adult
    b_front = a * rng.uniform(0.68, 0.84)
    b_back = b_front * rng.uniform(0.85, 0.95)
    fat = rng.uniform(8.0, 32.0) * habitus
    muscle = rng.uniform(7.0, 11.0)
    inset = fat + muscle
    ca, cb_front, cb_back = a - inset, b_front - inset, b_back - inset

    vb_semi = (rng.uniform(20.0, 24.0), rng.uniform(14.0, 17.0))
    vb_v = b_back - fat - rng.uniform(62.0, 72.0)
    vb_front = vb_v - vb_semi[1]

    aorta_r = rng.uniform(9.0, 12.0)
    aorta = (rng.uniform(6.0, 14.0), vb_front - aorta_r - rng.uniform(0.5, 3.0), aorta_r)
    ivc_semi = (rng.uniform(11.0, 15.0), rng.uniform(7.0, 10.0))
    ivc = (-rng.uniform(20.0, 27.0), vb_front - ivc_semi[1] - rng.uniform(1.0, 6.0), *ivc_semi)

    kidneys = []
    left_w = rng.uniform(-22.0, -5.0)
    for side, w_c in ((1.0, left_w), (-1.0, left_w - rng.uniform(8.0, 22.0))):
        centre = (side * rng.uniform(62.0, 74.0) * habitus ** 0.5, vb_v + rng.uniform(-8.0, 4.0), w_c)
        semi = (rng.uniform(23.0, 29.0), rng.uniform(19.0, 24.0), rng.uniform(45.0, 55.0))
        kidneys.append((centre, semi, side * rng.uniform(25.0, 45.0)))

    liver_right = (
        (-0.42 * ca, -0.05 * cb_front, rng.uniform(35.0, 60.0)),
        (0.62 * ca, 0.95 * cb_front, rng.uniform(85.0, 110.0)),
    )
    liver_left = (
        (rng.uniform(-0.05, 0.1) * ca, -0.5 * cb_front, rng.uniform(45.0, 70.0)),
        (0.45 * ca, 0.42 * cb_front, rng.uniform(45.0, 60.0)),
    )
    spleen = (
        (0.68 * ca, 0.35 * cb_back, rng.uniform(25.0, 45.0)),
        (rng.uniform(18.0, 24.0), rng.uniform(45.0, 60.0), rng.uniform(45.0, 60.0)),
        rng.uniform(-55.0, -35.0),
    )
    stomach = (
        (0.32 * ca, -0.42 * cb_front, rng.uniform(35.0, 55.0)),
        (rng.uniform(40.0, 55.0), rng.uniform(28.0, 40.0), rng.uniform(45.0, 60.0)),
        rng.uniform(-35.0, -15.0),
    )
    gallbladder = None
    if rng.random() < 0.7:
        gallbladder = (
            (-0.38 * ca, -0.55 * cb_front, rng.uniform(-20.0, 5.0)),
            (rng.uniform(11.0, 16.0), rng.uniform(11.0, 16.0), rng.uniform(25.0, 40.0)),
            rng.uniform(-40.0, 40.0),
        )

    # Vessels the pancreas wraps around: SMA anterior to the aorta, SMV to its right,
    # the splenic vein from the spleen hilum joining the SMV behind the pancreatic neck.
    sma = (aorta[0] - rng.uniform(0.0, 4.0), aorta[1] - aorta_r - rng.uniform(9.0, 14.0))
    smv = (sma[0] - rng.uniform(11.0, 16.0), sma[1] - rng.uniform(0.0, 4.0))
    confluence = np.array([smv[0], smv[1] - 3.0, rng.uniform(-4.0, 4.0)])
    sv_r = 4.5
    hilum = np.array([spleen[0][0] - 22.0, spleen[0][1] - 15.0, confluence[2] + rng.uniform(8.0, 25.0)])
    sv_controls = np.array([
        confluence,
        [sma[0] + 8.0, sma[1] - sv_r - 3.0, confluence[2] + 2.0],
        [aorta[0] + 40.0 * habitus, aorta[1] - 12.0 + rng.uniform(-4.0, 6.0), confluence[2] + 0.45 * (hilum[2] - confluence[2])],
        [kidneys[0][0][0] - 5.0, kidneys[0][0][1] - kidneys[0][1][1] - sv_r - 8.0, confluence[2] + 0.8 * (hilum[2] - confluence[2])],
        hilum,
    ])
    splenic_vein, _ = smooth_path(sv_controls, 2.0)
    portal_vein, _ = smooth_path(np.array([
        confluence,
        [confluence[0] - 15.0, confluence[1] - 5.0, confluence[2] + 18.0],
        [-0.35 * ca, confluence[1] - 8.0, confluence[2] + 40.0],
    ]), 2.5)

    pancreas_path, pancreas_radius, uncinate_path, uncinate_radius = _pancreas_shape(
        rng, splenic_vein, confluence, ivc, smv, sv_r, habitus
    )
    lrv_controls = np.array([
        [kidneys[0][0][0] - 15.0, kidneys[0][0][1] - 5.0, kidneys[0][0][2] + 5.0],
        [aorta[0] + 12.0, aorta[1] - aorta_r - 2.0, confluence[2] - 12.0],
        [aorta[0] - 8.0, aorta[1] - aorta_r - 3.0, confluence[2] - 14.0],
        [ivc[0], ivc[1], confluence[2] - 16.0],
    ])
    left_renal_vein, _ = smooth_path(lrv_controls, 2.0)

    head_bottom = pancreas_path[0]
    head_r = float(pancreas_radius[0])
    d_r = rng.uniform(9.0, 12.0)
    d2_u = min(head_bottom[0] - head_r - d_r - 2.0, ivc[0] - ivc[2] - d_r)
    duodenum_controls = np.array([
        [-0.05 * ca, -0.5 * cb_front, confluence[2] + 18.0],
        [d2_u + 8.0, head_bottom[1] - 18.0, confluence[2] + 10.0],
        [d2_u, head_bottom[1] - 2.0, head_bottom[2] + 15.0],
        [d2_u + 3.0, head_bottom[1] + 4.0, head_bottom[2] - 14.0],
        [aorta[0] - 5.0, aorta[1] - aorta_r - d_r - 1.0, head_bottom[2] - 24.0],
        [aorta[0] + 28.0, aorta[1] - aorta_r - 8.0, head_bottom[2] - 18.0],
        [aorta[0] + 36.0, aorta[1] - 30.0, head_bottom[2] + 2.0],
    ])
    duodenum_path, _ = smooth_path(duodenum_controls, d_r * 0.45)

    colon_r = rng.uniform(17.0, 23.0)
    colon_paths = _colon_paths(rng, ca, cb_front, cb_back, hilum, colon_r)
    bowel_r = rng.uniform(9.0, 12.0)
    avoid = np.concatenate([pancreas_path, duodenum_path, splenic_vein])
    bowel_paths = _small_bowel_paths(rng, ca, cb_front, vb_front, bowel_r, avoid)

    liver_vessels = _liver_vessels(rng, liver_right, portal_vein[-1])

    return Anatomy(
        body_semi=(a, b_front, b_back),
        subcutaneous_fat=fat,
        muscle_wall=muscle,
        vertebra_centre_v=vb_v,
        vertebra_semi=vb_semi,
        vertebra_period=rng.uniform(33.0, 38.0),
        vertebra_phase=rng.uniform(0.0, 1.0),
        aorta=aorta,
        ivc=ivc,
        kidneys=kidneys,
        liver_right=liver_right,
        liver_left=liver_left,
        liver_medial_limit=ivc[0] + rng.uniform(-5.0, 10.0),
        spleen=spleen,
        stomach=stomach,
        stomach_fill=rng.uniform(0.2, 0.8),
        gallbladder=gallbladder,
        splenic_vein=splenic_vein,
        portal_vein=portal_vein,
        smv_sma_top=confluence[2],
        sma=sma,
        smv=smv,
        left_renal_vein=left_renal_vein,
        pancreas_path=pancreas_path,
        pancreas_radius=pancreas_radius,
        uncinate_path=uncinate_path,
        uncinate_radius=uncinate_radius,
        duodenum_path=duodenum_path,
        duodenum_radius=d_r,
        colon_paths=colon_paths,
        colon_radius=colon_r,
        bowel_paths=bowel_paths,
        bowel_radius=bowel_r,
        liver_vessels=liver_vessels,
    )


def _pancreas_shape(
    rng: np.random.Generator,
    splenic_vein: np.ndarray,
    confluence: np.ndarray,
    ivc: tuple[float, float, float, float],
    smv: tuple[float, float],
    sv_r: float,
    habitus: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centreline and calibre of the gland: head right of the SMV and anterior to the IVC,
    neck in front of the confluence, body and tail along the splenic vein's anterior side."""
    size = rng.uniform(0.8, 1.2)
    head_r = rng.uniform(13.0, 18.0) * size
    neck_r = rng.uniform(6.5, 9.0) * size
    body_r = rng.uniform(8.0, 11.5) * size
    tail_r = rng.uniform(7.0, 10.5) * size
    head_height = rng.uniform(18.0, 30.0)
    head_u = smv[0] - head_r * rng.uniform(0.6, 0.95) - 4.0
    head_v = ivc[1] - ivc[3] - head_r * rng.uniform(0.6, 0.9)
    head_top = confluence[2] - rng.uniform(2.0, 8.0)

    # Body and tail: follow the splenic vein, displaced anteriorly by both calibres.
    n = len(splenic_vein)
    along = np.linspace(0.0, 1.0, n)
    body_radius_along = np.interp(along, [0.0, 0.15, 0.6, 0.9, 1.0], [neck_r, body_r, body_r * 0.95, tail_r, tail_r * 0.55])
    stop = int(n * rng.uniform(0.82, 0.97))
    offset = body_radius_along + sv_r - rng.uniform(1.5, 3.0)
    body_points = splenic_vein.copy()
    body_points[:, 1] -= offset
    body_points[:, 2] += rng.uniform(-2.0, 3.0)
    body_points = body_points[3:stop:3]
    body_radii = body_radius_along[3:stop:3]

    controls = np.vstack([
        [head_u + rng.uniform(-3, 3), head_v + rng.uniform(-3, 3), head_top - head_height],
        [head_u + rng.uniform(-3, 3), head_v - rng.uniform(0, 4), head_top - head_height * 0.5],
        [head_u + 2.0, head_v - 4.0, head_top],
        [confluence[0] - 4.0, confluence[1] - sv_r - neck_r - 1.0, confluence[2] + 1.0],
        body_points,
    ])
    radii = np.r_[head_r * 0.8, head_r, head_r * 0.85, neck_r, body_radii]
    path, t = smooth_path(controls, 2.0)
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(controls, axis=0), axis=1))]
    radius = np.interp(t, chord / chord[-1], radii)
    uncinate_r = head_r * rng.uniform(0.45, 0.6)
    uncinate_path, _ = smooth_path(np.array([
        [head_u, head_v + 2.0, head_top - head_height * 0.75],
        [smv[0] - 2.0, smv[1] + 10.0, head_top - head_height * 0.8],
        [smv[0] + rng.uniform(2.0, 8.0), smv[1] + 14.0, head_top - head_height * 0.85],
    ]), 2.0)
    uncinate_radius = np.linspace(uncinate_r * 1.3, uncinate_r * 0.6, len(uncinate_path))
    return path, radius * habitus ** 0.3, uncinate_path, uncinate_radius


def _colon_paths(
    rng: np.random.Generator, ca: float, cb_front: float, cb_back: float, splenic_hilum: np.ndarray, radius: float
) -> list[np.ndarray]:
    """Ascending colon and hepatic flexure, transverse colon, splenic flexure and descending."""
    edge = ca - radius - 3.0
    sag = rng.uniform(-85.0, -40.0)
    controls = np.array([
        [-edge, 0.1 * cb_back, -160.0],
        [-edge + 5.0, 0.0, -60.0],
        [-edge + 25.0, -0.45 * cb_front, sag + 15.0],
        [-0.1 * ca, -cb_front + radius + 8.0, sag],
        [0.45 * ca, -0.65 * cb_front, sag + 30.0],
        [edge - 10.0, -0.05 * cb_front, splenic_hilum[2] - 5.0],
        [edge - 5.0, 0.25 * cb_back, -40.0],
        [edge - 8.0, 0.2 * cb_back, -160.0],
    ])
    controls[:, :2] += rng.uniform(-6.0, 6.0, (len(controls), 2))
    path, _ = smooth_path(controls, radius * 0.45)
    return [path]


def _small_bowel_paths(
    rng: np.random.Generator, ca: float, cb_front: float, vb_front: float, radius: float, avoid: np.ndarray
) -> list[np.ndarray]:
    """Jejunal and ileal loops: smooth random walks in the anterior lower abdomen that keep
    clear of the pancreas, duodenum and splenic vein."""
    low = np.array([-0.55 * ca, -cb_front + radius + 4.0, -170.0])
    high = np.array([0.65 * ca, vb_front - radius - 15.0, -10.0])
    high = np.maximum(high, low + 20.0)  # thin patients: little room in front of the spine
    paths = []
    step = radius * 0.45
    for _ in range(int(rng.integers(4, 8))):
        position = rng.uniform(low, high)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        points = []
        for _ in range(int(rng.uniform(180.0, 380.0) / step)):
            direction += rng.standard_normal(3) * 0.35
            direction[2] *= 0.8  # loops wind mostly in the axial plane
            direction /= np.linalg.norm(direction)
            candidate = position + direction * step
            outside = (candidate < low) | (candidate > high)
            if outside.any():
                direction[outside] *= -1.0
                candidate = position + direction * step
            if np.min(np.linalg.norm(avoid - candidate, axis=1)) < radius + 22.0:
                direction *= -1.0
                continue
            position = candidate
            points.append(position.copy())
        if len(points) > 4:
            paths.append(gaussian_filter1d(np.asarray(points), 1.5, axis=0))
    return paths


def _liver_vessels(rng: np.random.Generator, liver_right: tuple[Vec3, Vec3], hilum: np.ndarray) -> list[np.ndarray]:
    """A few portal branches fanning out from the hilum into the right lobe."""
    centre, semi = np.asarray(liver_right[0]), np.asarray(liver_right[1])
    vessels = []
    for _ in range(int(rng.integers(3, 6))):
        target = centre + rng.uniform(-0.6, 0.6, 3) * semi
        target[0] = min(target[0], hilum[0] - 10.0)
        mid = (hilum + target) / 2.0 + rng.uniform(-8.0, 8.0, 3)
        path, _ = smooth_path(np.array([hilum, mid, target]), 2.0)
        vessels.append(path)
    return vessels


# ---------------------------------------------------------------------------------------
# Anatomy: painting
# ---------------------------------------------------------------------------------------


def _body_sdf(grid: Grid, semi: tuple[float, float, float], inset: float, muscle_profile: bool = False) -> np.ndarray:
    """2D signed distance (1, J, I) to the body outline shrunk by ``inset`` mm.

    The back is flatter than the belly (the patient lies on the table). With
    muscle_profile the inset grows at the flanks, where the three oblique muscles
    are thicker than the rectus sheath."""
    u = grid.u[None, None, :]
    v = grid.v[None, :, None]
    if muscle_profile:
        lateral = (u / semi[0]) ** 2 / ((u / semi[0]) ** 2 + (v / semi[1]) ** 2 + 1e-6)
        inset = inset + 5.0 * lateral * (v < semi[2] * 0.3)
    a = semi[0] - inset
    b = np.where(v < 0, semi[1] - inset, semi[2] - inset)
    # Superellipse (exponent 2.4) is boxier than an ellipse, as an abdomen is.
    p = 2.4
    r = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p)
    return ((r - 1.0) * np.minimum(a, b) * 0.9).astype(np.float32)


def paint_abdomen(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Paint every structure of ``anatomy`` onto ``canvas`` (tissue names are the keys the
    caller's tissue table must provide)."""
    grid = canvas.grid
    an = anatomy
    ramp = canvas.ramp_mm

    body = _body_sdf(grid, an.body_semi, 0.0)
    wall_outer = coverage(_body_sdf(grid, an.body_semi, an.subcutaneous_fat), ramp)
    cavity_sdf = _body_sdf(grid, an.body_semi, an.subcutaneous_fat + an.muscle_wall, muscle_profile=True)
    cavity = coverage(cavity_sdf, ramp)
    linea_alba = coverage(np.abs(grid.u[None, None, :]) - 1.2, ramp) * (grid.v[None, :, None] < 0)
    canvas.paint_layers_2d([
        ("fat", coverage(body, ramp)),
        ("muscle", wall_outer * (1.0 - cavity) * (1.0 - linea_alba)),
        ("visceral_fat", cavity),
    ])

    _paint_liver(canvas, an, cavity_sdf)
    _paint_spleen_and_stomach(canvas, an, cavity_sdf)
    _paint_kidneys(canvas, an)
    _paint_bowel(canvas, an, rng)
    # Retroperitoneal muscles and bone come after the organs that lean on them.
    _paint_spine_and_back_muscles(canvas, an)
    _paint_pancreas(canvas, an, rng)
    _paint_great_vessels(canvas, an)
    _paint_peripancreatic_vessels(canvas, an)


def _paint_spine_and_back_muscles(canvas: Canvas, an: Anatomy) -> None:
    grid = canvas.grid
    back = an.body_semi[2] - an.subcutaneous_fat
    vb_v = an.vertebra_centre_v
    vb_a, vb_b = an.vertebra_semi
    big = 1e4

    # Erector spinae either side of the spinous process, quadratus lumborum behind the
    # kidney, psoas beside the vertebral body (it thickens going down).
    for side in (-1.0, 1.0):
        top = vb_v + vb_b + 4.0
        semi = (26.0, max(14.0, (back - top) / 2.0), big)
        centre = (side * 29.0, (top + back) / 2.0, 0.0)
        box = ellipsoid_box(grid, centre, semi)
        if box is not None:
            canvas.paint_sdf("muscle", box, ellipsoid_sdf(grid.coords(box), centre, semi))
        ql_centre = (side * (vb_a + 36.0), vb_v + 24.0, 0.0)
        ql_semi = (15.0, 9.0, big)
        box = ellipsoid_box(grid, ql_centre, ql_semi)
        if box is not None:
            canvas.paint_sdf("muscle", box, ellipsoid_sdf(grid.coords(box), ql_centre, ql_semi, side * 35.0))
        box = grid.box((side * (vb_a + 14.0) - 30.0, vb_v - 30.0, -big), (side * (vb_a + 14.0) + 30.0, vb_v + 30.0, big))
        if box is not None:
            u, v, w = grid.coords(box)
            radius = np.clip(9.0 - 0.12 * (w - 20.0), 6.0, 24.0)
            d = np.sqrt((u - side * (vb_a + 6.0 + radius * 0.7)) ** 2 + ((v - vb_v + 2.0) / 0.85) ** 2) - radius
            canvas.paint_sdf("visceral_fat", box, d - 2.0)
            canvas.paint_sdf("muscle", box, d)

    # Vertebral bodies with discs, canal, arch, spinous and transverse processes.
    box = grid.box((-vb_a - 3, vb_v - vb_b - 3, -big), (vb_a + 3, vb_v + vb_b + 3, big))
    if box is not None:
        coords = grid.coords(box)
        w = coords[2]
        phase = ((w / an.vertebra_period) + an.vertebra_phase) % 1.0
        disc = (phase < 0.22).astype(np.float32)
        outer = ellipsoid_sdf(coords, (0.0, vb_v, 0.0), (vb_a, vb_b, big))
        canvas.paint_sdf("visceral_fat", box, outer - 2.0)
        canvas.paint_sdf("bone_cortical", box, outer)
        inner = coverage(ellipsoid_sdf(coords, (0.0, vb_v, 0.0), (vb_a - 2.2, vb_b - 2.2, big)), canvas.ramp_mm)
        canvas.paint("bone_cancellous", box, inner * (1.0 - disc))
        canvas.paint("disc", box, coverage(outer, canvas.ramp_mm) * disc)
    canal_v = vb_v + vb_b + 9.0
    arch_box = grid.box((-vb_a - 30, vb_v, -big), (vb_a + 30, back, big))
    if arch_box is not None:
        u, v, w = grid.coords(arch_box)
        phase = ((w / an.vertebra_period) + an.vertebra_phase) % 1.0
        arch_present = ((phase > 0.3) & (phase < 0.9)).astype(np.float32)
        transverse_present = ((phase > 0.45) & (phase < 0.6)).astype(np.float32)
        ring = np.sqrt(u ** 2 + ((v - canal_v) / 0.9) ** 2)
        arch = np.maximum(ring - 14.0, -(v - vb_v - vb_b + 1.0))
        canvas.paint_sdf("bone_cortical", arch_box, arch + (1 - arch_present) * 100)
        spinous = np.maximum(np.abs(u) - 3.5, np.maximum(canal_v - v, v - (back - 18.0)))
        canvas.paint_sdf("bone_cortical", arch_box, spinous + (1 - arch_present) * 100)
        transverse = np.maximum(np.abs(u) - (vb_a + 14.0), np.abs(v - canal_v + 4.0) - 3.0)
        canvas.paint_sdf("bone_cortical", arch_box, transverse + (1 - transverse_present) * 100)
        canvas.paint_sdf("csf", arch_box, ring - 8.5)


def _paint_liver(canvas: Canvas, an: Anatomy, cavity_sdf: np.ndarray) -> None:
    grid = canvas.grid
    (rc, rs), (lc, ls) = an.liver_right, an.liver_left
    low = [min(c - r for c, r in ((rc[0], rs[0]), (lc[0], ls[0]))), -an.body_semi[1], min(rc[2] - rs[2], lc[2] - ls[2])]
    high = [max(rc[0] + rs[0], lc[0] + ls[0]), an.body_semi[2], max(rc[2] + rs[2], lc[2] + ls[2])]
    box = grid.box(low, high)
    if box is None:
        return
    coords = grid.coords(box)
    u, v, w = coords
    right = ellipsoid_sdf(coords, rc, rs)
    left = ellipsoid_sdf(coords, lc, ls)
    # Low down the liver keeps to the right flank: the mesentery, duodenum and pancreas
    # occupy a dome-shaped space in the middle that ends near the hilum.
    reach = 110.0
    middle = ellipsoid_sdf(
        coords,
        (an.liver_medial_limit + reach, an.ivc[1] - 10.0, -45.0),
        (reach, 0.95 * an.cavity_semi[1], 90.0),
    )
    liver = np.maximum(np.minimum(right, left), -middle)
    liver = np.maximum(liver, cavity_sdf[:, box[1], box[2]] + 2.0)
    canvas.paint_sdf("liver", box, liver)
    alpha_liver = coverage(liver, canvas.ramp_mm)
    for path in an.liver_vessels:
        radius = np.linspace(5.0, 2.0, len(path))
        vbox, sdf = tube_sdf(grid, path, radius)
        if vbox is None:
            continue
        inside = values_in_box(alpha_liver, box, vbox, fill=0.0)
        canvas.paint("portal_vein", vbox, coverage(sdf, canvas.ramp_mm) * inside)
    if an.gallbladder is not None:
        centre, semi, angle = an.gallbladder
        gbox = ellipsoid_box(grid, centre, semi)
        if gbox is not None:
            sdf = ellipsoid_sdf(grid.coords(gbox), centre, semi, angle)
            canvas.paint_sdf("bowel_wall", gbox, sdf)
            canvas.paint_sdf("bile", gbox, sdf + 1.5)


def _paint_spleen_and_stomach(canvas: Canvas, an: Anatomy, cavity_sdf: np.ndarray) -> None:
    grid = canvas.grid
    centre, semi, angle = an.spleen
    box = ellipsoid_box(grid, centre, semi)
    if box is not None:
        coords = grid.coords(box)
        spleen = ellipsoid_sdf(coords, centre, semi, angle)
        # Concave hilum: a bite taken from the medial-anterior side.
        bite_centre = (centre[0] - semi[0] * 1.6, centre[1] - semi[0] * 0.8, centre[2])
        bite = ellipsoid_sdf(coords, bite_centre, (semi[0] * 1.1, semi[1] * 0.6, semi[2] * 1.2), angle)
        spleen = np.maximum(np.maximum(spleen, -bite), cavity_sdf[:, box[1], box[2]] + 1.0)
        canvas.paint_sdf("spleen", box, spleen)

    centre, semi, angle = an.stomach
    box = ellipsoid_box(grid, centre, semi)
    if box is not None:
        coords = grid.coords(box)
        stomach = np.maximum(ellipsoid_sdf(coords, centre, semi, angle), cavity_sdf[:, box[1], box[2]] + 2.0)
        canvas.paint_sdf("bowel_wall", box, stomach)
        lumen = coverage(stomach + 4.0, canvas.ramp_mm)
        # Supine patient: gas rises anteriorly above a flat gas-fluid level.
        _, v, _ = coords
        level = centre[1] - semi[1] + 2.0 * semi[1] * (1.0 - an.stomach_fill)
        gas = coverage(level - v, canvas.ramp_mm)
        canvas.paint("stomach_content", box, lumen * (1.0 - gas))
        canvas.paint("gas", box, lumen * gas)


def _paint_kidneys(canvas: Canvas, an: Anatomy) -> None:
    grid = canvas.grid
    for centre, semi, angle in an.kidneys:
        fat_semi = tuple(s + 5.0 for s in semi)
        box = ellipsoid_box(grid, centre, fat_semi)
        if box is None:
            continue
        coords = grid.coords(box)
        canvas.paint_sdf("visceral_fat", box, ellipsoid_sdf(coords, centre, fat_semi, angle))
        kidney = ellipsoid_sdf(coords, centre, semi, angle)
        canvas.paint_sdf("kidney_cortex", box, kidney)
        medulla_semi = tuple(s - 6.5 for s in semi)
        canvas.paint_sdf("kidney_medulla", box, ellipsoid_sdf(coords, centre, medulla_semi, angle))
        # Renal sinus fat opens toward the hilum (anteromedial).
        side = np.sign(centre[0])
        sinus_centre = (centre[0] - side * semi[0] * 0.55, centre[1] - semi[1] * 0.35, centre[2])
        sinus = ellipsoid_sdf(coords, sinus_centre, (semi[0] * 0.45, semi[1] * 0.35, semi[2] * 0.45), angle)
        canvas.paint_sdf("sinus_fat", box, sinus)


def _paint_bowel(canvas: Canvas, an: Anatomy, rng: np.random.Generator) -> None:
    for path in an.colon_paths:
        s = np.arange(len(path)) * an.colon_radius * 0.45
        radius = an.colon_radius * (1.0 + 0.1 * np.sin(2 * np.pi * s / 28.0))  # haustra
        _paint_hollow_tube(canvas, rng, path, radius, content="stool", pockets=int(rng.integers(1, 5)), pocket_length=(20.0, 70.0))
    for path in an.bowel_paths:
        _paint_hollow_tube(canvas, rng, path, an.bowel_radius, content="bowel_fluid", pockets=int(rng.integers(0, 3)), pocket_length=(2.0, 12.0))
    _paint_hollow_tube(canvas, rng, an.duodenum_path, an.duodenum_radius, content="bowel_fluid", pockets=int(rng.integers(0, 3)), pocket_length=(5.0, 25.0))


def _paint_hollow_tube(
    canvas: Canvas,
    rng: np.random.Generator,
    path: np.ndarray,
    radius,
    content: str,
    pockets: int,
    pocket_length: tuple[float, float],
    wall: float = 2.5,
) -> None:
    """A bowel segment: enhancing wall, fluid or stool, and gas pockets that float to the
    anterior side of the lumen (the patient is supine)."""
    box, sdf = tube_sdf(canvas.grid, path, radius)
    if box is None:
        return
    canvas.paint_sdf("bowel_wall", box, sdf)
    lumen_sdf = sdf + wall
    canvas.paint_sdf(content, box, lumen_sdf)
    step = float(np.mean(np.linalg.norm(np.diff(path, axis=0), axis=1))) if len(path) > 1 else 1.0
    radius_arr = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(path),))
    for _ in range(pockets):
        count = max(1, int(rng.uniform(*pocket_length) / step))
        start = int(rng.integers(0, max(1, len(path) - count)))
        fill = rng.uniform(0.3, 0.75)
        segment = path[start:start + count].copy()
        r = radius_arr[start:start + count]
        segment[:, 1] -= r * fill  # shift toward anterior: gas rises
        gbox, gas_sdf = tube_sdf(canvas.grid, segment, r)
        if gbox is None:
            continue
        inside = np.maximum(gas_sdf, values_in_box(lumen_sdf, box, gbox, fill=1e4))
        canvas.paint_sdf("gas", gbox, inside)
    if content == "stool":
        # Small gas bubbles mottle the stool.
        bubbles = coverage((1.9 - canvas.texture[box]) * 4.0, 1.0)
        canvas.paint("gas", box, coverage(lumen_sdf, canvas.ramp_mm) * bubbles)


def _paint_great_vessels(canvas: Canvas, an: Anatomy) -> None:
    grid = canvas.grid
    big = 1e4
    au, av, ar = an.aorta
    box = grid.box((au - ar - 3, av - ar - 3, -big), (au + ar + 3, av + ar + 3, big))
    if box is not None:
        u, v, _ = grid.coords(box)
        canvas.paint_sdf("artery", box, np.sqrt((u - au) ** 2 + (v - av) ** 2) - ar)
    iu, iv, isu, isv = an.ivc
    box = grid.box((iu - isu - 3, iv - isv - 3, -big), (iu + isu + 3, iv + isv + 3, big))
    if box is not None:
        coords = grid.coords(box)
        canvas.paint_sdf("ivc", box, ellipsoid_sdf(coords, (iu, iv, 0.0), (isu, isv, big)))


def _paint_pancreas(canvas: Canvas, an: Anatomy, rng: np.random.Generator) -> None:
    grid = canvas.grid
    box, sdf = tube_sdf(grid, an.pancreas_path, an.pancreas_radius)
    if box is None:
        return
    ubox, usdf = tube_sdf(grid, an.uncinate_path, an.uncinate_radius)
    if ubox is not None:
        sdf = np.minimum(sdf, values_in_box(usdf, ubox, box, fill=1e4))
    # Lobulated outline: the surface bulges and dips over ~5-10 mm.
    fx, fy, fz = grid.frame_spacing
    lobules = smooth_noise(rng, sdf.shape, (max(1.0, 6.0 / fz), 7.0 / fy, 7.0 / fx))
    sdf = sdf + 1.6 * lobules
    # Peripancreatic fat: a thin plane, of varying width, between the gland and its neighbours.
    canvas.paint_sdf("visceral_fat", box, sdf - rng.uniform(1.0, 4.0))
    canvas.paint_sdf("pancreas", box, sdf, label="pancreas")
    # Interlobular fat clefts: darker streaks inside the gland, still part of it.
    alpha = coverage(sdf + 1.0, canvas.ramp_mm)
    clefts = np.clip((canvas.texture[box] - 1.2) * 1.5, 0.0, 0.6)
    canvas.paint("visceral_fat", box, alpha * clefts, occlude=False)


def _paint_peripancreatic_vessels(canvas: Canvas, an: Anatomy) -> None:
    grid = canvas.grid
    box, sdf = tube_sdf(grid, an.splenic_vein, 4.5)
    canvas.paint_sdf("portal_vein", box, sdf)
    box, sdf = tube_sdf(grid, an.portal_vein, np.linspace(6.0, 7.5, len(an.portal_vein)))
    canvas.paint_sdf("portal_vein", box, sdf)
    box, sdf = tube_sdf(grid, an.left_renal_vein, 4.5)
    canvas.paint_sdf("ivc", box, sdf)
    top = an.smv_sma_top
    for (cu, cv), radius, tissue, height in ((an.smv, 5.5, "portal_vein", top), (an.sma, 3.5, "artery", top + 6.0)):
        vbox = grid.box((cu - radius - 3, cv - radius - 3, -1e4), (cu + radius + 3, cv + radius + 3, height))
        if vbox is None:
            continue
        u, v, _ = grid.coords(vbox)
        canvas.paint_sdf(tissue, vbox, np.sqrt((u - cu) ** 2 + (v - cv) ** 2) - radius)
    # SMA origin: a short segment running forward from the aorta.
    au, av, ar = an.aorta
    path, _ = smooth_path(np.array([[au, av, top + 10.0], [an.sma[0], av - ar - 3.0, top + 8.0], [an.sma[0], an.sma[1], top + 4.0]]), 1.5)
    box, sdf = tube_sdf(grid, path, 3.5)
    canvas.paint_sdf("artery", box, sdf)
