"""Evaluation: how well each explanation method explains, measured the way the papers measure.

- :mod:`.protocol`: the one skeleton every evaluator runs (batches -> record -> relevance per row ->
  score), with ``random`` and the peers as ordinary rows;
- :mod:`.evaluators`: the embedded ShapesWorld models against their ground truth
  (``python -m gae_workbook.evaluate``);
- :mod:`.harness`: your own image classifier on your own images, on one or many processes
  (``python -m gae_workbook.harness``), reading :mod:`.datasets`;
- :mod:`.metrics`: the metrics (pointing, relevance mass, segmentation, perturbation, deletion);
- :mod:`.peers`: the methods of other libraries behind one signature;
- :mod:`.sanity`: cascading model randomisation (``python -m gae_workbook.sanity``);
- :mod:`.probe`: which Hugging Face families the generic adapters explain (``python -m gae_workbook.probe``).
"""
