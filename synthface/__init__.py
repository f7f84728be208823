"""One procedural face renderer with exact ground truth, shared by every system's synthetic set.

``synthface.face``: identities, mouth states (and the mouth's colour layers), :func:`render`
(see its module docstring); ``synthface.landmarks``: exact 68-point landmarks;
``synthface.pose``: head pose; ``synthface.scene``: posed, lit, aligned crops (the hard talking-face
set); ``synthface.attributes``: glasses, baldness, beards and the
content-transfer sets. This package re-exports ``synthface.face``'s public names.
"""

from . import face
from .face import *  # noqa: F403  (the renderer's public names, listed in face.__all__)

__all__ = list(face.__all__)
