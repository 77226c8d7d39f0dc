"""Registration authority: the business rules and every state transition.

Never sees HTTP; the only writer to storage; calls the VA and the CA.
"""

from acme_ca.ra.authority import RegistrationAuthority
from acme_ca.ra.context import RAContext, RASettings

__all__ = ["RAContext", "RASettings", "RegistrationAuthority"]
