"""Public test helpers, for acme-ca's own tests and for users testing their ACME clients.

Nothing in the server imports this package; test-only behaviour lives here rather than as
production switches. ``ChallengeTestServer`` is a mock DNS resolver plus http-01 responder
with a Pebble-compatible management API (also run as ``acme-ca challtestsrv``).
"""

from acme_ca.testing.challtestsrv import ChallengeTestServer

__all__ = ["ChallengeTestServer"]
