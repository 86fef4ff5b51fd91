"""hwemu: user-facing helpers that are not a layer of the machine itself (the pytest plugin)."""
