"""Model runtimes behind one Protocol (see `base.py`)."""
