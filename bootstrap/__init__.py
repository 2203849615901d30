"""Setup run before the stack starts (``bin/make-models``, ``bin/up``, ``bin/test``), not at serving time."""
