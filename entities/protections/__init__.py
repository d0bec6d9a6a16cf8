"""Protections, one module each (see entities.protections.base for the contract); importing this
package registers them all. Torch-free at import: the schema builds its `protection:` choices here."""

from entities.protections import dpm, gaussian_mechanism, learned, perturbations, shared_obfuscator
from entities.protections.base import (
    Holdings,
    ProtectionKind,
    ProtectionSection,
    channels_of,
    make_protection,
)
from entities.protections.dpm import DPMSection

__all__ = [
    "DPMSection",
    "Holdings",
    "ProtectionKind",
    "ProtectionSection",
    "channels_of",
    "dpm",
    "gaussian_mechanism",
    "learned",
    "make_protection",
    "perturbations",
    "shared_obfuscator",
]
