"""spanlib: the library behind the SPAN book."""

__version__ = "0.1.0"
