"""thaw: checkpoint a warm GPU inference worker once, restore every later replica in seconds."""

__version__ = "0.1.0"
