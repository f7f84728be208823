"""The plain Glow as a trainable model (``train.py --model glow``): its recipe on the core in
``glow``. A model package like the others, so ``glow`` (the core) never imports ``training``."""
