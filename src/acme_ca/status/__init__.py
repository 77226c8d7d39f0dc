"""Certificate status over plain HTTP: CRLs (RFC 5280) and OCSP (RFC 6960).

A second, small front end beside the ACME one: it reads certificate status
through `acme_ca.storage.status.StatusReader` (read-only), signs with
`acme_ca.ca.crl` and `acme_ca.ca.ocsp`, and writes nothing. ARI (RFC 9773) is
part of the ACME API and lives in `acme_ca.wfe`.
"""

from acme_ca.status.app import create_status_app
from acme_ca.status.crls import CrlPublisher, CrlSettings, SignedCrl
from acme_ca.status.responder import OcspAnswer, OcspResponder, OcspSettings
from acme_ca.status.server import StatusListener, StatusSettings, bind_listener
from acme_ca.status.urls import RevocationUrls

__all__ = [
    "CrlPublisher",
    "CrlSettings",
    "OcspAnswer",
    "OcspResponder",
    "OcspSettings",
    "RevocationUrls",
    "SignedCrl",
    "StatusListener",
    "StatusSettings",
    "bind_listener",
    "create_status_app",
]
