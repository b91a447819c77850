"""Who may call: the tenants and their keys, and the admin key, read from the
environment variables the config names. Keys are kept only as sha256 digests
(core/auth.py), and remembered by the redaction (observe/redact.py) so that
they never show in an error text or a log line."""

from __future__ import annotations

import os

from gateway.config.loader import LoadedConfig
from gateway.core.auth import Tenant, Tenants, key_digest
from gateway.observe import redact


def build_tenants(loaded: LoadedConfig, problems: list[str]) -> Tenants:
    """Each tenant under the sha256 digest of each of its keys (`key_env`: one
    variable or a list, for rotation); the keys themselves are not kept."""
    by_digest: dict[bytes, Tenant] = {}
    for i, tenant in enumerate(loaded.config.tenants):
        entry = Tenant(tenant.name, None if tenant.models is None else frozenset(tenant.models))
        listed = not isinstance(tenant.key_env, str)
        for j, env in enumerate(tenant.key_envs()):
            where = loaded.where(
                ("tenants", i, "key_env", j) if listed else ("tenants", i, "key_env")
            )
            key = os.environ.get(env)
            if not key:
                problems.append(f"{where}: environment variable {env} is not set")
                continue
            digest = key_digest(key)
            owner = by_digest.get(digest)
            if owner is not None and owner.name != tenant.name:
                problems.append(
                    f"{where}: tenants '{owner.name}' and '{tenant.name}' have the same key"
                )
                continue
            by_digest[digest] = entry
            redact.remember_digest(digest, len(key))
    return Tenants(by_digest)


def admin_key_digest(loaded: LoadedConfig, problems: list[str]) -> bytes | None:
    """The admin key's sha256 digest (the key itself is not kept), or None when
    `server.admin_key_env` is not set."""
    admin_env = loaded.config.server.admin_key_env
    if not admin_env:
        return None
    key = os.environ.get(admin_env)
    if not key:
        problems.append(
            f"{loaded.where(('server', 'admin_key_env'))}: environment variable "
            f"{admin_env} is not set"
        )
        return None
    digest = key_digest(key)
    redact.remember_digest(digest, len(key))
    return digest
