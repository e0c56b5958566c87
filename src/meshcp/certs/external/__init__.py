"""Clients of external certificate authorities (cfssl, Vault).

The only part of `certs` that speaks HTTP; aiohttp is imported nowhere else in it.
"""
