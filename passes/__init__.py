"""Compiler passes, one per module; installed as ``deos_dsl.passes``."""
