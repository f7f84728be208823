"""The pose-guided flow: a Glow conditioned on 2D Gaussian landmark maps (pose transfer and
face driving). ``pose_flow.model`` (the flow), ``pose_flow.conditions`` (the maps),
``pose_flow.recipe`` (``train.py --model pose-flow``)."""
