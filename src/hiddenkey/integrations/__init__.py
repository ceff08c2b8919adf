"""Integrations with training stacks outside transformers (each imports its optional dependency lazily).

* :mod:`.trl` -- :class:`hiddenkey.SFTTrainer`, TRL's ``SFTTrainer`` with the consistency loss
  (``pip install hiddenkey[trl]``).
"""
