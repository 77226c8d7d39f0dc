"""The wire layer, pure: JWS parsing and verification, payloads, resources, problems.

Imports only `model` and `errors` (and JOSE/crypto libraries); no web framework,
no database.
"""
