"""Evaluation metrics: Fréchet distances on CLIP, Inception or offline classifier features.

CLIP (:mod:`.clip`) and Inception (:mod:`.inception`) extractors import their optional
dependencies lazily; everything else works with the core install.
"""

from .features import ClassifierFeatures, FeatureExtractor, build_extractor, quantise, weights_hash
from .frechet import FeatureStats, FrechetDistance, frechet_distance, gaussian_stats

__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "FrechetDistance",
    "build_extractor",
    "frechet_distance",
    "gaussian_stats",
    "quantise",
    "weights_hash",
]
