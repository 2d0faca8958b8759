"""The toy world's third modality: a "sensor" reading, as an IoT device next to a flower reports it.

A reading is a float32 vector of `SENSOR_FEATURES`: noisy measurements of the three class
attributes (petal colour as RGB, petal count, petal-edge sharpness) plus nuisance measurements
that never decide the class (centre and background colour, size, air temperature, humidity).
It is deliberately imperfect: every device has its own gain, the count sensor is noisy enough
to confuse 5 and 8 petals now and then, and each feature is missing (NaN) with probability
`missing_rate`, as dropped fields are in real telemetry. Task models see the NaN mask
explicitly (`modality.sensors_to_tensor`).

The server has no sensor. Its synthetic readings come from what it has: the captioner's caption
of each synthetic image (`from_captions`). Only the attributes the caption names are measured
(with the same sensor noise), the others are missing, so a sensor client learns from the
server's *reading of the image*, never from the prompt class (that would make its vote echo the
prompt). This is judge-free: the judge only scores, it never produces training data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from worlds import domain

SENSOR_FEATURES: tuple[str, ...] = (
    "petal_r",
    "petal_g",
    "petal_b",
    "petal_count",
    "petal_sharpness",
    "centre_r",
    "centre_g",
    "centre_b",
    "background_r",
    "background_g",
    "background_b",
    "size",
    "temperature",
    "humidity",
)
SENSOR_DIM = len(SENSOR_FEATURES)
_PETAL_RGB, _COUNT, _SHARP = slice(0, 3), 3, 4
_CENTRE_RGB, _BG_RGB, _SIZE, _TEMP, _HUMID = slice(5, 8), slice(8, 11), 11, 12, 13
#: Measurement noise (in the normalised units below); the count noise is what makes 5 vs 8 hard.
COLOUR_NOISE, COUNT_NOISE, SHARP_NOISE = 0.06, 0.12, 0.25


def _measure(
    rng: np.random.Generator,
    petal_rgb: np.ndarray,
    count: np.ndarray,
    sharpness: np.ndarray,
    missing_rate: float,
) -> np.ndarray:
    """Readings [n, D] from the class attributes (NaN where unknown), plus random nuisance and missing fields."""
    n = len(count)
    out = np.empty((n, SENSOR_DIM), np.float32)
    gain = rng.uniform(0.9, 1.1, (n, 1))  # per-device calibration
    out[:, _PETAL_RGB] = petal_rgb / 255.0 * gain + rng.normal(0, COLOUR_NOISE, (n, 3))
    out[:, _COUNT] = count / 8.0 + rng.normal(0, COUNT_NOISE, n)
    out[:, _SHARP] = np.log(sharpness) + rng.normal(0, SHARP_NOISE, n)
    centres = np.array(list(domain.CENTRES.values()), np.float32)[rng.integers(len(domain.CENTRES), size=n)]
    backgrounds = np.array(list(domain.BACKGROUNDS.values()), np.float32)[rng.integers(len(domain.BACKGROUNDS), size=n)]
    out[:, _CENTRE_RGB] = centres / 255.0 * gain + rng.normal(0, COLOUR_NOISE, (n, 3))
    out[:, _BG_RGB] = backgrounds / 255.0 * gain + rng.normal(0, COLOUR_NOISE, (n, 3))
    out[:, _SIZE] = rng.choice(list(domain.SIZES.values()), n) + rng.normal(0, 0.03, n)
    out[:, _TEMP] = rng.normal(0.0, 1.0, n)
    out[:, _HUMID] = rng.uniform(0.0, 1.0, n)
    out[rng.random((n, SENSOR_DIM)) < missing_rate] = np.nan
    return out


def readings(labels: np.ndarray, seed: int, missing_rate: float = 0.15) -> np.ndarray:
    """Sensor readings [n, SENSOR_DIM] (float32, NaN where missing) of flowers of classes `labels`."""
    rng = np.random.default_rng(seed)
    classes = [domain.CLASSES[int(y)] for y in np.asarray(labels)]
    petal = np.array([domain.COLOURS[c.colour] for c in classes], np.float32).reshape(-1, 3)
    petal = petal + rng.normal(0, 12, petal.shape)  # the flower's own colour varies, as in the images
    count = np.array([c.count for c in classes], np.float32)
    sharp = np.array([domain.SHAPES[c.shape] for c in classes], np.float32) * rng.uniform(0.8, 1.25, len(classes))
    return _measure(rng, petal, count, sharp, missing_rate)


def from_captions(captions: Sequence[str], seeds: Sequence[int], missing_rate: float = 0.15) -> np.ndarray:
    """Synthetic readings [n, D] for the server's pool: measure what each caption names.

    Row i uses its own seed ``seeds[i]`` (e.g. from pool row and generation round), so a row
    sent twice is the same reading. Class attributes the caption does not name are NaN.
    """
    out = np.empty((len(captions), SENSOR_DIM), np.float32)
    for i, (caption, seed) in enumerate(zip(captions, seeds)):
        rng = np.random.default_rng(seed)
        found = domain.caption_attributes(str(caption))
        colour = found.get("colour")
        petal = np.array([domain.COLOURS[colour] if colour else (math.nan,) * 3], np.float32)
        petal = petal + rng.normal(0, 12, petal.shape)
        count = np.array([float(found["count"]) if "count" in found else math.nan], np.float32)
        shape = found.get("shape")
        sharp = np.array([domain.SHAPES[shape] if shape else math.nan], np.float32) * rng.uniform(0.8, 1.25)
        out[i] = _measure(rng, petal, count, sharp, missing_rate)[0]
    return out
