"""Domain-randomisation settings and roof/crop palettes of the synthetic scenes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

SEASONS = ("spring", "summer", "autumn", "winter")
PALETTES = ("china", "global", "mixed")


@dataclass(frozen=True)
class Randomisation:
    """How a scene looks. Defaults are the demo district's look (Chinese village, 5 cm).

    palette: china (grey/red tile gables, flat concrete, blue/white 彩钢棚), global (adds
    corrugated metal house roofs in rust/red/blue/grey, black tanks, denser irregular
    peri-urban houses) or mixed. density scales how many parcels/sites are built.
    sun_* None means: drawn from the scene seed (or from the capture date in a district).
    """

    palette: str = "china"
    season: str = "summer"
    gsd_m: float = 0.05
    density: float = 1.0
    sun_azimuth_deg: float | None = None
    sun_elevation_deg: float | None = None
    blur_sigma_px: float = 0.5
    noise_sigma: float = 2.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    haze: float = 0.0
    orientation_jitter_deg: float = 3.0
    nodata_edges: bool = True
    lean: float = 0.02  # relief displacement (m per m of height) at the scene edge: facades show
    cars: float = 1.0  # how many parked/moving cars (hard negatives)
    l_houses: float = 0.0  # share of houses with a second wing at right angles (L / T plan): one structure
    terraces: float = 0.0  # share of village blocks built as rows of adjoining houses, each roof its own structure

    @classmethod
    def sample(cls, rng: np.random.Generator, gsd_range: tuple[float, float] = (0.08, 0.15),
               l_houses: tuple[float, float] | None = (0.2, 0.6)) -> "Randomisation":
        """Draw a varied look for one training scene; ``l_houses`` None: no L / T-plan houses and
        the draws of the scenes made before they existed (2026-11-26), seed for seed."""
        palette = str(rng.choice(PALETTES, p=[0.4, 0.3, 0.3]))
        wb = tuple(float(v) for v in rng.normal(1.0, 0.04, 3).clip(0.88, 1.12))
        return cls(
            palette=palette,
            season=str(rng.choice(SEASONS)),
            gsd_m=float(rng.uniform(*gsd_range)),
            density=float(rng.uniform(0.6, 1.6)),
            sun_azimuth_deg=float(rng.uniform(0, 360)),
            sun_elevation_deg=float(rng.uniform(25, 80)),
            blur_sigma_px=float(rng.uniform(0.0, 1.3)),
            noise_sigma=float(rng.uniform(0.5, 6.0)),
            brightness=float(rng.uniform(0.8, 1.2)),
            contrast=float(rng.uniform(0.8, 1.2)),
            saturation=float(rng.uniform(0.6, 1.25)),
            white_balance=wb,  # type: ignore[arg-type]
            haze=float(rng.uniform(0.0, 0.25) if rng.random() < 0.4 else 0.0),
            orientation_jitter_deg=float(rng.choice([2.0, 8.0, 25.0])) if palette != "china" else 4.0,
            nodata_edges=bool(rng.random() < 0.3),
            lean=float(rng.uniform(0.0, 0.08)),
            cars=float(rng.uniform(0.3, 2.0)),
            l_houses=float(rng.uniform(*l_houses)) if l_houses else 0.0,
        )

    def with_(self, **kw) -> "Randomisation":
        return replace(self, **kw)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ palettes (flat-lit sRGB)
TILE_CHINA = [((82, 86, 92), 5), ((98, 100, 104), 3), ((150, 72, 58), 3), ((172, 96, 60), 1),
              ((62, 92, 128), 1)]
FLAT_CHINA = [((176, 174, 168), 5), ((196, 192, 182), 3), ((150, 150, 146), 3), ((205, 198, 182), 2),
              ((214, 214, 210), 1)]
SHED_CHINA = [((40, 96, 172), 6), ((52, 120, 190), 2), ((214, 218, 222), 4), ((180, 70, 55), 1)]
METAL_GLOBAL = [((140, 84, 56), 4), ((160, 58, 48), 3), ((56, 96, 150), 3), ((150, 154, 158), 4),
                ((196, 200, 204), 2), ((70, 112, 84), 1), ((112, 70, 52), 2), ((90, 92, 96), 2)]
FLAT_GLOBAL = [((170, 168, 160), 4), ((128, 126, 120), 3), ((196, 190, 178), 2), ((150, 140, 126), 2),
               ((205, 180, 150), 1)]
TILE_GLOBAL = [((170, 92, 62), 3), ((120, 70, 52), 2), ((96, 98, 104), 2)]
TANK_CHINA = [((200, 205, 210), 3), ((60, 110, 180), 2), ((170, 172, 176), 2)]
TANK_GLOBAL = [((28, 28, 30), 4), ((60, 110, 180), 2), ((200, 200, 196), 1), ((140, 60, 45), 1)]

CROPS = {
    "spring": [("wheat_green", 4), ("rapeseed", 3), ("vegetable", 2), ("tilled", 1), ("fallow", 1)],
    "summer": [("rice", 5), ("vegetable", 2), ("wheat_ripe", 1), ("tilled", 1), ("fallow", 1)],
    "autumn": [("rice_ripe", 4), ("stubble", 2), ("vegetable", 2), ("tilled", 2)],
    "winter": [("tilled", 3), ("stubble", 2), ("wheat_young", 3), ("vegetable", 1), ("fallow", 1)],
}
# crop: (colour, between-row colour, row period m, row contrast)
CROP_LOOK = {
    "rice": ((72, 122, 52), (58, 96, 52), 0.30, 0.35),
    "rice_ripe": ((182, 160, 84), (150, 130, 70), 0.30, 0.30),
    "wheat_green": ((96, 138, 62), (120, 112, 84), 0.25, 0.40),
    "wheat_young": ((110, 138, 80), (128, 110, 88), 0.25, 0.70),
    "wheat_ripe": ((196, 172, 100), (170, 146, 90), 0.25, 0.30),
    "rapeseed": ((214, 196, 64), (120, 140, 60), 0.40, 0.35),
    "vegetable": ((76, 128, 62), (132, 108, 84), 0.70, 0.85),
    "tilled": ((138, 114, 88), (112, 92, 72), 0.60, 0.50),
    "stubble": ((170, 150, 110), (140, 120, 90), 0.30, 0.40),
    "fallow": ((124, 128, 80), (110, 104, 76), 1.00, 0.15),
}
GROUND = {"spring": (118, 124, 84), "summer": (100, 120, 70), "autumn": (140, 128, 96),
          "winter": (138, 126, 104)}
TREE = {"spring": (62, 98, 46), "summer": (46, 82, 40), "autumn": (88, 92, 46), "winter": (78, 76, 56)}


def pick(rng: np.random.Generator, weighted: list) -> tuple:
    """Weighted choice from [(value, weight), ...]."""
    w = np.array([x[1] for x in weighted], float)
    return weighted[int(rng.choice(len(weighted), p=w / w.sum()))][0]


def jitter(rng: np.random.Generator, colour, amount: float = 8.0) -> tuple[float, float, float]:
    c = np.asarray(colour, float) + rng.normal(0, amount) + rng.normal(0, amount / 2, 3)
    return tuple(float(v) for v in c.clip(0, 255))
