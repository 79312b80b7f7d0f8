"""Image handling shared by services (no torch): decoding with limits and a pixel
budget, quality statistics, the model-input transform and the synthetic apple renderer."""

from lineloop.vision.decode import (
    SUPPORTED_CONTENT_TYPES,
    DecodedImage,
    DecodeLimits,
    Failure,
    ImageHeader,
    ImageRejected,
    decode_image,
    load_image,
    open_image,
)
from lineloop.vision.budget import OverBudget, PixelBudget
from lineloop.vision.preprocess import batch_model_input, to_model_input
from lineloop.vision.quality import Quality, quality_stats
from lineloop.vision.synthetic import CLASSES, AppleRenderer, Drift, RenderedFrame, drift_strength, encode_jpeg, encode_png

__all__ = [
    "CLASSES",
    "SUPPORTED_CONTENT_TYPES",
    "AppleRenderer",
    "DecodeLimits",
    "DecodedImage",
    "Drift",
    "Failure",
    "ImageHeader",
    "ImageRejected",
    "OverBudget",
    "PixelBudget",
    "Quality",
    "RenderedFrame",
    "batch_model_input",
    "decode_image",
    "drift_strength",
    "encode_jpeg",
    "encode_png",
    "load_image",
    "open_image",
    "quality_stats",
    "to_model_input",
]
