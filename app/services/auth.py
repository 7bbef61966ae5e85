"""API tokens: creation, hashed storage, constant-time verification, roles."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.timeutil import utcnow
from app.models.registry import ApiToken, AuditEntry, Role

ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
TOKEN_PREFIX = "clm_"
# Token use is recorded in the audit log at most this often per token (not per request).
USE_AUDIT_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name}"

    def allows(self, needed: Role | str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[Role(needed)]


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create_token(session: Session, *, role: Role | str, name: str, actor: str = "cli") -> str:
    """Store a new token (hash only) and return the raw value, shown once."""
    role = Role(role)
    name = name.strip()
    # The audit actor is "token:<name>" in a 120-character column.
    if not name or len(name) > 100:
        raise ValueError("token name must be 1–100 characters")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            name=name, role=role, token_hash=hash_token(raw), prefix=raw[:10], created_at=utcnow()
        )
    )
    session.add(
        AuditEntry(
            actor=actor,
            action="token.created",
            reason=f"role {role.value}",
            details={"token_name": name, "role": role.value},
            at=utcnow(),
        )
    )
    session.flush()
    return raw


def verify_token(session: Session, raw: str) -> TokenInfo | None:
    """The token's identity, or None if unknown or revoked. Records (throttled) use."""
    if not raw or len(raw) > 200:
        return None
    digest = hash_token(raw)
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    # Compare digests in constant time even though the lookup matched on an index.
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= USE_AUDIT_INTERVAL:
        session.add(
            AuditEntry(
                actor=f"token:{row.name}",
                action="token.used",
                at=now,
                details={"token_name": row.name, "role": row.role.value},
            )
        )
        row.last_used_at = now
    session.flush()
    return TokenInfo(id=row.id, name=row.name, role=row.role)


def revoke_token(session: Session, name: str, actor: str) -> int:
    """Revoke every active token with this name; returns how many."""
    rows = session.scalars(
        select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    ).all()
    for row in rows:
        row.revoked_at = utcnow()
    if rows:
        session.add(
            AuditEntry(
                actor=actor,
                action="token.revoked",
                at=utcnow(),
                details={"token_name": name, "count": len(rows)},
            )
        )
    session.flush()
    return len(rows)


def token_for_session(session: Session, token_id: int) -> tuple[TokenInfo, str] | None:
    """(identity, stored hash) of a live token by id, for the web console's session
    cookie (signed with the hash, so revoking the token ends its sessions); None when the
    token is unknown or revoked."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at:
        return None
    return TokenInfo(id=row.id, name=row.name, role=row.role), row.token_hash
