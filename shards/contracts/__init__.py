"""The contracts every package shares, in the lowest layer (docs/DESIGN.md, "Layers").

* :mod:`shards.contracts.batch`: the ``Batch`` that ``pipeline`` produces and every detector consumes.
* :mod:`shards.contracts.checkpoint`: the checkpoint directory layout that ``train`` writes and ``eval``
  reads, and the safe reader of its model weights and resolved config.

``shards.conventions`` (frames, boxes, cameras) and ``shards.typed_config`` (typed YAML configs) are the
other two shared contracts; they sit beside this package. Nothing here imports ``pipeline``,
``bev_model``, ``train`` or ``eval``.
"""
