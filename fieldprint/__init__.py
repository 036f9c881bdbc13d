"""Fieldprint: the Engine interface, model I/O and the command line."""
