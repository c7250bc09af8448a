"""System checks of the governance app's configuration (``manage.py check --deploy``)."""

from __future__ import annotations

from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def audit_signing_key_check(app_configs, **kwargs) -> list[Error]:
    """Without a signing key the audit chain has no anchor outside the database: whoever can
    write the database could cut events off its end unnoticed."""
    from governance.audit_anchor import AuditSigningKeyMissing, signing_key

    try:
        signing_key()
    except AuditSigningKeyMissing as exc:
        return [Error(
            str(exc), id="governance.E001",
            hint="Run `manage.py audit_signing_key_generate`, keep the private key out of the database and its "
                 "backups (a secret store), and give the public key to your auditors.",
        )]
    return []
