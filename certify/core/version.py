"""certify's version, recorded in every results row and JSON output."""

__version__ = "0.1.0"
