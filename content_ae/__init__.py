"""Content disentanglement between a set and its subset (Press et al., ICLR 2019).

``content_ae.model``: E1/E2/decoder/discriminator of ``--arch original`` and ``improved``;
``content_ae.recipe``: the ``content-ae`` recipe (``train.py``, and ``test.py``/``evaluate.py``
through its test-time hooks); ``content_ae.data``: A/B sets; ``content_ae.celeba``
(``preprocess.py --celeba / --attr_from``), ``content_ae.demo``.
"""
