"""The workbook's own material around the :mod:`gae_utils` library, in four rooms:

- :mod:`gae_workbook.models`: the embedded models (``zoo``, safetensors ``weights/``), their training
  recipes (``python -m gae_workbook.models.train``), DETR on ShapesWorld, photos for pretrained models;
- :mod:`gae_workbook.evaluation`: one protocol skeleton (batches -> record -> relevance per row ->
  score) under the ShapesWorld evaluators (``python -m gae_workbook.evaluate``), the harness for your
  own model and data (``python -m gae_workbook.harness``), the sanity check, the peers and the probe;
- :mod:`gae_workbook.exploration`: views of a recording, figures and the explorers (widgets);
- :mod:`gae_workbook.tools`: benchmarks (``python -m gae_workbook.tools.bench``), the GPU table, the
  notebook runner (``python -m gae_workbook.tools.run``), the static site and the slides.

The modules left at this level (``evaluate``, ``harness``, ``sanity``, ``probe``, ``probe_vision``)
only forward the evaluation room's command lines."""
