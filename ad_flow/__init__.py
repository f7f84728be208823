"""AD-flow: a feature encoder that splits a frozen Glow's latents into face and lip parts,
a sequence classifier on the lip parts, and the talking-face transfer built on them."""

from .model import (
    ENCODERS,
    ADFlow,
    ConvEncoder,
    FeatureEncoder,
    FullEncoder,
    LinearEncoder,
    MLPEncoder,
    SequenceClassifier,
    cycle_loss,
    reconstruction_loss,
    roll_time,
    structural_loss,
)

__all__ = [
    "ADFlow", "ConvEncoder", "ENCODERS", "FeatureEncoder", "FullEncoder",
    "LinearEncoder", "MLPEncoder",
    "SequenceClassifier", "cycle_loss", "reconstruction_loss", "roll_time", "structural_loss",
]
