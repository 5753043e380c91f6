"""deos: declarative operator-space DSL and compiler for token-reduction search."""

__version__ = "0.1.0"
