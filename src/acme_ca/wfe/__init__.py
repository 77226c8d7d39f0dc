"""Web front end: routing, the JWS and nonce gate, headers, problem documents.

Handlers are short: they call the RA for every change and read storage through
the read-only interface. No business rule is decided here.
"""

from acme_ca.wfe.app import create_app
from acme_ca.wfe.context import DirectoryMeta, FrontEnd
from acme_ca.wfe.gate import Gate, RequiredTerms

__all__ = ["DirectoryMeta", "FrontEnd", "Gate", "RequiredTerms", "create_app"]
