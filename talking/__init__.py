"""The talking-face job shared by every model (``test.py``): inputs, mouth mixing, batched
generation through the model's recipe, frames + video + grid."""

from .inputs import (
    TalkingError,
    available_queries,
    available_sources,
    resolve_query,
    resolve_source,
)
from .job import add_common_args, run

__all__ = ["TalkingError", "add_common_args", "available_queries", "available_sources",
           "resolve_query", "resolve_source", "run"]
