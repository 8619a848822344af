"""PNG previews of a generated scene for the docs (`save_previews`)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.synth.randomisation import Randomisation
from pipeline.synth.scene import render_scene


def save_previews(out_dir: Path | str = "docs/img", seed: int = 3, size_m: float = 200.0, gsd_m: float = 0.05,
                  preview_px: int = 1000, chip_px: int = 640,
                  randomisation: Randomisation | None = None) -> tuple[Path, Path]:
    """Write synth_scene.png (whole scene, downsampled) and synth_chip.png (full resolution)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rnd = randomisation or Randomisation(season="spring", sun_azimuth_deg=150, sun_elevation_deg=52)
    scene = render_scene(seed, size_m, gsd_m, rnd)
    rgb = scene.rgb
    n = rgb.shape[0]
    small = cv2.resize(rgb, (preview_px, preview_px), interpolation=cv2.INTER_AREA)
    p1 = out / "synth_scene.png"
    cv2.imwrite(str(p1), cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    # the chip: the 640 px window holding the most structure pixels
    t = scene.truth
    best, best_score = (max(0, n // 2 - chip_px // 2),) * 2, -1.0
    if len(t):
        tr = ~scene.transform
        cents = np.array([tr * (g.centroid.x, g.centroid.y) for g in t.geometry])
        for cx, cy in cents:
            c0 = int(np.clip(cx - chip_px / 2, 0, n - chip_px))
            r0 = int(np.clip(cy - chip_px / 2, 0, n - chip_px))
            inside = (cents[:, 0] > c0) & (cents[:, 0] < c0 + chip_px) & (cents[:, 1] > r0) & (cents[:, 1] < r0 + chip_px)
            kinds = len(set(t.class_name[inside]))
            score = inside.sum() + 4 * kinds
            if score > best_score:
                best, best_score = (r0, c0), score
    r0, c0 = best
    chip = rgb[r0:r0 + chip_px, c0:c0 + chip_px]
    p2 = out / "synth_chip.png"
    cv2.imwrite(str(p2), cv2.cvtColor(chip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return p1, p2
