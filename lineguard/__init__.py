"""lineguard: streaming visual inspection for manufacturing lines."""

__version__ = "0.1.0"
