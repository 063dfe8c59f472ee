"""Selection strategy: which triangles are trained at each frame (see ``selection.core``)."""
from selection.core import (DEFAULT_DILATE, DEFAULT_KEEP, DEFAULT_TAU, SelectionResult,
                            choose_reference, compute_selection, dilate_masks, robust_align,
                            vertex_faces, weld_corners)

__all__ = ["DEFAULT_DILATE", "DEFAULT_KEEP", "DEFAULT_TAU", "SelectionResult", "choose_reference",
           "compute_selection", "dilate_masks", "robust_align", "vertex_faces", "weld_corners"]
