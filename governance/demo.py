"""Foundation: roles, API keys and the tamper-evident audit log."""

from __future__ import annotations

from governance import services
from governance.demo_context import DemoContext
from governance.roles import ALL_ROLES
from governance.selectors import audit_chain_verify


def run(ctx: DemoContext) -> None:
    for role in ALL_ROLES:
        user = services.user_ensure_with_role(username=f"demo_{role}", role=role, actor="demo")
        ctx.shared[f"user_{role}"] = user
    ctx.say(f"role users: {', '.join(f'demo_{r}' for r in ALL_ROLES)}")
    result = audit_chain_verify()
    ctx.fact("audit chain", f"{'verified' if result.ok else 'BROKEN'}, {result.checked} events")
