"""MI-flow: a conditional Glow whose split latents carry the mouth (condition-relevant) and whose
top latent carries the rest (condition-irrelevant), with an optional CLUB mutual-information
penalty between the two.

    from mi_flow import MIFlow, load_mi_flow
"""

from .estimator import CLUB
from .io import model_from_thesis_state
from .model import MIFlow, mask_condition, mouth_window
from .recipe import load_mi_flow

__all__ = ["CLUB", "MIFlow", "load_mi_flow", "mask_condition", "model_from_thesis_state",
           "mouth_window"]
