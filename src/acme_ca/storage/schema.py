"""Tables. Times are integer microseconds since the epoch (UTC), the same on SQLite and
PostgreSQL, and cheap to compare in indexes. JSON columns are text."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

ID = 32

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("jwk", Text, nullable=False),
    Column("thumbprint", String(64), nullable=False, unique=True),
    Column("contact", Text, nullable=False),
    Column("tos_agreed", Boolean, nullable=False),
    # RFC 8555 §7.3.3 (migration 0004_terms_agreement): the terms agreed to; NULL for
    # accounts from before, which agreed to the terms the settings row
    # `legacy_terms_of_service` names.
    Column("tos_agreed_url", Text, nullable=True),
    Column("eab_kid", String(128), nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("account_id", String(ID), nullable=False),
    Column("status", String(16), nullable=False),
    Column("identifiers", Text, nullable=False),
    Column("authz_ids", Text, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("not_before", BigInteger, nullable=True),
    Column("not_after", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("certificate_id", String(ID), nullable=True),
    Column("profile", String(64), nullable=True),
    Column("replaces", String(255), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("csr", LargeBinary, nullable=True),
    # Chosen before signing so that an issuance taken up after a crash signs the
    # same serial (Boulder's ISSUANCE-CYCLE: the serial is recorded first).
    Column("serial", String(40), nullable=True),
    Index("ix_orders_account_created", "account_id", "created_at"),
    Index("ix_orders_status", "status"),
)

order_authzs = Table(
    "order_authzs",
    metadata,
    Column("order_id", String(ID), primary_key=True),
    Column("authz_id", String(ID), primary_key=True),
    Index("ix_order_authzs_authz", "authz_id"),
)

authzs = Table(
    "authzs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("account_id", String(ID), nullable=False),
    Column("identifier_type", String(8), nullable=False),
    Column("identifier_value", String(255), nullable=False),
    Column("wildcard", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_authzs_reuse", "account_id", "identifier_type", "identifier_value", "status"),
)

challenges = Table(
    "challenges",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("authz_id", String(ID), nullable=False),
    Column("type", String(16), nullable=False),
    Column("token", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("validated", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Column("validation_record", Text, nullable=True),
    Index("ix_challenges_authz", "authz_id"),
)

certificates = Table(
    "certificates",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("serial", String(40), nullable=False, unique=True),
    Column("account_id", String(ID), nullable=False),
    # One certificate per order, enforced by the database (DESIGN.md: two finalize
    # requests never issue two certificates).
    Column("order_id", String(ID), nullable=False, unique=True),
    Column("identifiers", Text, nullable=False),
    Column("pem_chains", Text, nullable=False),
    Column("spki_sha256", String(64), nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Column("revocation_reason", Integer, nullable=True),
    # An account's certificates newest first, a page at a time (`admin certificates`):
    # ids lead with their creation time (migration 0006_certificate_inventory).
    Index("ix_certificates_account", "account_id", "id"),
    Index("ix_certificates_spki", "spki_sha256"),
)

used_nonces = Table(
    "used_nonces",
    metadata,
    Column("value", String(64), primary_key=True),
    Column("expires", BigInteger, nullable=False),
    Index("ix_used_nonces_expires", "expires"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("target_id", String(ID), primary_key=True),
    Column("lease_until", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Index("ix_jobs_lease", "lease_until"),
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# ---- issuance policy (migration 0003_issuance_policy) ------------------------

# RFC 8555 §7.3.4: keys for External Account Binding, created by the operator.
eab_keys = Table(
    "eab_keys",
    metadata,
    Column("kid", String(128), primary_key=True),
    Column("hmac_key", LargeBinary, nullable=False),
    Column("label", String(255), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    # The first account bound with the key; `bind_count` counts them all.
    Column("account_id", String(ID), nullable=True),
    Column("bind_count", Integer, nullable=False),
)

# Rate-limit counters: one row per (limit, key, time bucket), so that a check sums a
# handful of rows whatever the volume.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)

# Pending authorizations per account (a rate limit) without scanning the account's history.
ix_authzs_account_status = Index("ix_authzs_account_status", authzs.c.account_id, authzs.c.status)

# ---- revocation status and renewal (migration 0002_revocation_status) --------

# RFC 9773: certificates the operator asked to have renewed early (`admin renew-early`).
renewal_marks = Table(
    "renewal_marks",
    metadata,
    Column("serial", String(40), primary_key=True),
    Column("marked_at", BigInteger, nullable=False),
)

# The CRL publisher reads the revoked certificates, and newOrder looks up `replaces`.
ix_certificates_revoked_at = Index("ix_certificates_revoked_at", certificates.c.revoked_at)
ix_orders_replaces = Index("ix_orders_replaces", orders.c.replaces)

# ---- one live replacement per certificate (migration 0005_one_live_replacement) --

# RFC 9773 §5: at most one order that is not invalid names a certificate in `replaces`;
# the database decides between concurrent newOrders (processes or hosts). Orders past
# their expiry are made invalid before an insert (`Storage.create_order`).
_LIVE = "status <> 'invalid'"
ux_orders_replaces_live = Index(
    "ux_orders_replaces_live",
    orders.c.replaces,
    unique=True,
    sqlite_where=text(_LIVE),
    postgresql_where=text(_LIVE),
)

# ---- certificate inventory (migration 0006_certificate_inventory) -------------

# Certificates by name (`admin certificates --name`, `admin revoke --name`): a
# certificate keeps its names as JSON text, so they are found through the
# authorizations of its order (`storage.inventory`).
ix_authzs_identifier = Index("ix_authzs_identifier", authzs.c.identifier_value)
