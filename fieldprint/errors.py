"""Typed errors for everything a user can get wrong: each message names the file and field.

The CLI catches `FieldprintError`, prints ``error: <message>`` and exits with code 2. Code
that raises one of these must say *where* the problem is (a path, a tensor name, a JSON field)
and *what* was expected, so the message alone is enough to fix the input.
"""
from __future__ import annotations


class FieldprintError(Exception):
    """Base class of every user-facing Fieldprint error."""


class CheckpointError(FieldprintError):
    """A Hugging Face checkpoint folder is missing a file, or a file or tensor is malformed."""


class UnsupportedArchitectureError(CheckpointError):
    """The checkpoint's architecture or one of its features is not supported by the spec."""


class ArtifactError(FieldprintError):
    """A quantized model artifact is missing, malformed, or fails its commitment check."""


class PromptTooLongError(FieldprintError):
    """A prompt (plus anchors and requested tokens) does not fit the model's context."""


class ConfigError(FieldprintError):
    """A configuration value (profile name, sampling option, path) is invalid."""
