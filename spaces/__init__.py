"""Packaged data: the library of bundled ``.deos`` search spaces."""
