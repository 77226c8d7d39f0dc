"""acme-ca: an ACME (RFC 8555) certificate authority server."""

__all__ = ["__version__"]

__version__ = "0.1.0"
