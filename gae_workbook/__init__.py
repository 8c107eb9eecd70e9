"""The workbook's own material around the :mod:`gae_utils` library: the embedded models and their
training recipes (:mod:`~gae_workbook.zoo`, :mod:`~gae_workbook.train`), evaluation
(``python -m gae_workbook.evaluate``), benchmarks (``python -m gae_workbook.bench``), figures,
explorers and the notebook runner (``python -m gae_workbook.run``)."""
