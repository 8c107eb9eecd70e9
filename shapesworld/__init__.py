"""ShapesWorld: synthetic scenes with ground truth for every family the workbook explains.

Scenes of coloured shapes with per-object masks and boxes (:mod:`shapesworld.scenes`), captions,
questions with their key words and a toy translation with word alignments
(:mod:`shapesworld.language`), the input processors of the embedded models
(:mod:`shapesworld.inputs`) and their training targets (:mod:`shapesworld.targets`). Like a
dataset package, it knows nothing about explanations; the models trained on it live in
:mod:`gae_workbook.models.zoo`.
"""

from .scenes import CLASS_NAMES, Scene, ShapesBatch, ShapesWorld

__all__ = ["CLASS_NAMES", "Scene", "ShapesBatch", "ShapesWorld"]
