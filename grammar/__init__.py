"""Packaged data: the Lark grammar of the .deos language (``deos.lark``)."""
