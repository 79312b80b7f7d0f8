"""Synthetic apples on a conveyor: procedural, deterministic frames for the simulator and tests.

A frame is a function of (seed, camera, frame index) only, so the same command line
renders the same frames on any machine. Classes: `ok`, `bruise`, `rot`, `scab`.
Drift modes change the picture the way a real line does: a dirty lens (blur and haze
growing over time), lighting (colour temperature and exposure), a new variety (a colour
the model never saw), a camera shift (framing moves).
"""

from __future__ import annotations

import dataclasses
import enum
import io
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageFilter

CLASSES = ("ok", "bruise", "rot", "scab")
DEFAULT_SHARES = {"ok": 0.7, "bruise": 0.1, "rot": 0.1, "scab": 0.1}

# Base and secondary skin colours (RGB) of the varieties a model is trained on.
VARIETIES = {
    "red-delicious": ((150, 22, 30), (95, 12, 20)),
    "granny-smith": ((120, 175, 60), (150, 195, 80)),
    "gala": ((205, 85, 45), (225, 170, 70)),
}
# The variety that appears with `new-variety` drift: none of the above.
NEW_VARIETY = ("golden-purple", ((95, 40, 120), (200, 175, 70)))


class Drift(enum.StrEnum):
    NONE = "none"
    DIRTY_LENS = "dirty-lens"
    LIGHTING = "lighting"
    NEW_VARIETY = "new-variety"
    CAMERA_SHIFT = "camera-shift"


# Frames over which a drift reaches full strength after it starts: a lens gets dirty
# slowly; a lamp change, a new delivery or a knocked camera are sudden.
RAMP_FRAMES = {Drift.DIRTY_LENS: 300, Drift.LIGHTING: 1, Drift.NEW_VARIETY: 1, Drift.CAMERA_SHIFT: 1, Drift.NONE: 1}


def drift_strength(mode: Drift, frames_since_start: int) -> float:
    """0 before the drift starts, then rising to 1 over the mode's ramp."""
    if mode is Drift.NONE or frames_since_start < 0:
        return 0.0
    return min(1.0, (frames_since_start + 1) / RAMP_FRAMES[mode])


@dataclasses.dataclass(frozen=True)
class RenderedFrame:
    image: Image.Image
    label: str
    variety: str
    drift: Drift
    drift_strength: float


class AppleRenderer:
    """Renders square RGB frames of one apple on a conveyor belt."""

    def __init__(self, size: int = 256, seed: int = 0, shares: Mapping[str, float] | None = None) -> None:
        if size < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size}")
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        unknown = set(shares) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown classes {sorted(unknown)}; classes are {', '.join(CLASSES)}")
        total = sum(shares.values())
        if total <= 0 or any(v < 0 for v in shares.values()):
            raise ValueError(f"class shares must be non-negative and not all zero, got {shares}")
        self.size = size
        self.seed = seed
        self.classes = [c for c in CLASSES if shares.get(c, 0) > 0]
        self.probabilities = np.array([shares[c] / total for c in self.classes])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self._xx, self._yy = xx, yy

    def render(
        self, frame_index: int, camera_index: int = 0, drift: Drift = Drift.NONE, strength: float = 0.0,
        label: str | None = None,
    ) -> RenderedFrame:
        rng = np.random.default_rng([self.seed, camera_index, frame_index])
        label = label or str(rng.choice(self.classes, p=self.probabilities))
        if label not in CLASSES:
            raise ValueError(f"unknown class {label!r}")
        if drift is Drift.NEW_VARIETY and rng.random() < strength:
            variety, colours = NEW_VARIETY
        else:
            variety = str(rng.choice(sorted(VARIETIES)))
            colours = VARIETIES[variety]
        rgb = self._scene(rng, colours, label)
        image = Image.fromarray(rgb, "RGB")
        image = self._apply_drift(image, rng, drift, strength)
        return RenderedFrame(image, label, variety, drift, strength if drift is not Drift.NONE else 0.0)

    # ---- drawing ------------------------------------------------------------

    def _noise_field(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Smooth noise in -1..1: a coarse random grid upsampled bilinearly."""
        coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        field = Image.fromarray(coarse, "F").resize((self.size, self.size), Image.Resampling.BICUBIC)
        return np.clip(np.asarray(field), -1, 1)

    def _blob(self, cx: float, cy: float, radius: float) -> np.ndarray:
        d2 = ((self._xx - cx) ** 2 + (self._yy - cy) ** 2) / max(radius, 1.0) ** 2
        return np.exp(-d2 * 2.0).astype(np.float32, copy=False)

    def _scene(self, rng: np.random.Generator, colours, label: str) -> np.ndarray:
        s = self.size
        xx, yy = self._xx, self._yy
        # Conveyor: dark grey belt with slats, texture.
        belt = 58 + 6 * self._noise_field(rng, 12) + 2.0 * rng.standard_normal((s, s), dtype=np.float32)
        slat_period = s / 6
        phase = rng.uniform(0, slat_period)
        belt -= 14 * (((yy + phase) % slat_period) < s / 60)
        img = belt[..., None] * np.array([1.0, 1.02, 1.05], dtype=np.float32)

        # The apple: a slightly squashed sphere, lit from the top left.
        cx = s / 2 + rng.uniform(-0.08, 0.08) * s
        cy = s / 2 + rng.uniform(-0.08, 0.08) * s
        r = s * rng.uniform(0.27, 0.34)
        rx, ry = r * rng.uniform(0.95, 1.05), r * rng.uniform(0.92, 1.0)
        nx, ny = (xx - cx) / rx, (yy - cy) / ry
        d2 = nx**2 + ny**2
        inside = d2 < 1.0
        nz = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
        norm = float(np.sqrt(0.45**2 + 0.55**2 + 0.70**2))
        lambert = np.clip((-0.45 * nx - 0.55 * ny + 0.70 * nz) / norm, 0.0, 1.0)
        shade = 0.35 + 0.75 * lambert
        base, second = (np.array(c, dtype=np.float32) for c in colours)
        mix = 0.5 + 0.5 * self._noise_field(rng, 7)
        streaks = 0.5 + 0.5 * np.sin(np.arctan2(ny, nx) * float(rng.integers(9, 16)) + 4 * self._noise_field(rng, 5))
        mix = np.clip(0.75 * mix + 0.25 * streaks, 0, 1)[..., None]
        skin = base * (1 - mix) + second * mix
        # Lenticels: small light dots on the skin.
        skin += 18 * (rng.random((s, s), dtype=np.float32) > 0.995)[..., None]
        apple = skin * shade[..., None]

        defect = np.zeros((s, s), np.float32)
        defect_colour = np.zeros(3, np.float32)
        if label == "bruise":
            for _ in range(rng.integers(1, 3)):
                a, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55) * r
                defect = np.maximum(defect, 0.85 * self._blob(cx + rad * np.cos(a), cy + rad * np.sin(a), rng.uniform(0.18, 0.28) * r))
            defect_colour = np.array([105, 62, 38], np.float32)
        elif label == "rot":
            a, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * r
            bx, by, br = cx + rad * np.cos(a), cy + rad * np.sin(a), rng.uniform(0.32, 0.48) * r
            dist = np.sqrt((xx - bx) ** 2 + (yy - by) ** 2) / br
            rings = 0.85 + 0.15 * np.sin(dist * 14)
            defect = np.clip(1.15 - dist, 0, 1) ** 0.6 * rings
            defect_colour = np.array([62, 38, 20], np.float32)
        elif label == "scab":
            for _ in range(rng.integers(18, 40)):
                a, rad = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 0.8)) * r
                spot = self._blob(cx + rad * np.cos(a), cy + rad * np.sin(a), rng.uniform(0.025, 0.06) * r)
                defect = np.maximum(defect, np.clip(spot * 1.6, 0, 1))
            defect_colour = np.array([48, 44, 28], np.float32)
        defect = defect[..., None]
        apple = apple * (1 - defect) + (defect_colour * shade[..., None]) * defect

        # Specular highlight and stem.
        hx, hy = cx - 0.38 * rx, cy - 0.42 * ry
        apple += 70 * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.10 * r) ** 2))[..., None]
        stem = self._blob(cx + rng.uniform(-0.1, 0.1) * r, cy - 0.15 * r, 0.07 * r)[..., None]
        apple = apple * (1 - stem) + np.array([60, 45, 25], np.float32) * stem

        # Soft edge and a contact shadow on the belt.
        edge = np.clip((1.0 - np.sqrt(d2)) * r / 1.5, 0.0, 1.0)[..., None]
        shadow = np.exp(-(((xx - cx - 0.12 * r) / (1.1 * rx)) ** 2 + ((yy - cy - 0.15 * r) / (1.1 * ry)) ** 2) ** 2)
        img = img * (1 - 0.55 * shadow[..., None] * ~inside[..., None])
        img = img * (1 - edge) + apple * edge

        # Lighting noise: exposure and white balance jitter, sensor noise.
        img = img * (rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)).astype(np.float32)
        img += 3.0 * rng.standard_normal(img.shape, dtype=np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)

    def _apply_drift(self, image: Image.Image, rng: np.random.Generator, drift: Drift, strength: float) -> Image.Image:
        if drift is Drift.NONE or strength <= 0:
            return image
        s = self.size
        if drift is Drift.DIRTY_LENS:
            blurred = image.filter(ImageFilter.GaussianBlur(radius=0.4 + 3.5 * strength))
            haze = np.asarray(blurred, np.float32) * (1 - 0.45 * strength) + 205 * 0.45 * strength
            return Image.fromarray(np.clip(haze, 0, 255).astype(np.uint8), "RGB")
        if drift is Drift.LIGHTING:
            # Warmer, dimmer light: a colour temperature and exposure shift.
            gains = np.array([1 + 0.30 * strength, 1.0, 1 - 0.35 * strength]) * (1 - 0.30 * strength)
            shifted = np.asarray(image, np.float32) * gains
            return Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8), "RGB")
        if drift is Drift.CAMERA_SHIFT:
            # The camera was knocked: the frame moves, zooms and tilts.
            zoom = 1 + 0.25 * strength
            dx, dy = 0.18 * s * strength, 0.12 * s * strength
            angle = np.deg2rad(8 * strength)
            cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
            c = s / 2
            # Inverse affine map (output -> input pixel), as Pillow wants it.
            coeffs = (cos, -sin, c - cos * c + sin * c + dx, sin, cos, c - sin * c - cos * c + dy)
            return image.transform((s, s), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=(40, 40, 42))
        return image  # NEW_VARIETY changes the apple itself, in render()


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
