"""Fieldprint executable specification.

Every rule that two conforming engines must agree on lives here once, as plain PyTorch
and Python whose docstrings are the normative text. `spec` imports only torch, the
standard library and hashing/signature primitives; engines and the auditor import it.
"""
