"""The certificate authority: CA bootstrap and import, CSR checks, leaf signing.

Imports only `acme_ca.policy.keys`, `errors`, `model` and `clock`; it signs and
returns, and stores nothing (DESIGN.md: the RA records and stores).
"""

from acme_ca.ca.authority import CertificateAuthority, CertificateProfile, IssuedCertificate
from acme_ca.ca.bootstrap import KeyType, create_ca, ensure_ca, import_ca, issue_tls_certificate
from acme_ca.ca.csr import check_csr, load_csr

__all__ = [
    "CertificateAuthority",
    "CertificateProfile",
    "IssuedCertificate",
    "KeyType",
    "create_ca",
    "ensure_ca",
    "import_ca",
    "issue_tls_certificate",
    "check_csr",
    "load_csr",
]
