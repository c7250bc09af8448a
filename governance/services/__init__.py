"""Services that write governance records, one module per concept (as Zulip split its actions):

- ``errors``: ``ServiceError`` and ``ServiceConflict``, ``moment_for_field`` (a client's
  date-time or a 400 naming the field), ``SYSTEM_ACTOR`` and the actor naming the audit uses;
- ``audit``: the tamper-evident audit chain: ``audit_event_record`` (every app's services
  append through it), ``audit_events_record`` (many events in one statement) and
  ``audit_chain_verification_record``;
- ``access``: role groups, granting a user a role, and API keys (create, revoke, mark used);
- ``subjects``: ``DataSubject`` rows from pseudonyms in bulk, and the Art. 17 erasure of a
  person's consent history and subject row;
- ``purposes``: purposes, their Art. 6(4) compatibility assessments, data categories and
  data-subject categories;
- ``activities``: records of processing activities (Art. 30(1)): validate, create, update;
- ``consent``: the consent ledger (Art. 7): validating and ingesting batches of consent events;
- ``consent_evidence``: the closed set of evidence keys, each decoded and checked by its own rule;
- ``limits``: processing limits on a person: restriction (Art. 18) and its lifting, objection
  (Art. 21) and the compelling grounds that override it.

Inside the package the imports run one way: ``errors`` <- ``audit`` <- everything else, and
``subjects`` and ``consent_evidence`` <- ``consent``. Keyword-only, atomic, audited. Callers import from here.
"""

from governance.services.access import (
    api_key_create,
    api_key_mark_used,
    api_key_revoke,
    roles_ensure,
    user_ensure_with_role,
)
from governance.services.activities import (
    PROCESSING_ACTIVITY_FIELDS,
    REQUIRED_ACTIVITY_FIELDS,
    processing_activity_create,
    processing_activity_update,
    processing_activity_validate,
)
from governance.services.audit import audit_chain_verification_record, audit_event_record, audit_events_record
from governance.services.consent import (
    CONSENT_CLOCK_TOLERANCE,
    CONSENT_EVENT_KEYS,
    MAX_CONSENT_BATCH,
    consent_event_derive_id,
    consent_events_ingest,
)
from governance.services.consent_evidence import CONSENT_EVIDENCE_KEYS, ip_truncate
from governance.services.errors import SYSTEM_ACTOR, ServiceConflict, ServiceError, moment_for_field
from governance.services.limits import (
    processing_objection_compelling_grounds_record,
    processing_objection_create,
    processing_restriction_create,
    processing_restriction_lift,
)
from governance.services.purposes import (
    COMPATIBILITY_FACTORS,
    data_category_create,
    data_category_update,
    data_subject_category_create,
    data_subject_category_update,
    purpose_compatibility_check,
    purpose_compatibility_declare,
    purpose_create,
)
from governance.services.subjects import consent_events_erase, data_subject_ensure_many, data_subject_erase

__all__ = [
    # errors
    "SYSTEM_ACTOR",
    "ServiceConflict",
    "ServiceError",
    "moment_for_field",
    # audit
    "audit_chain_verification_record",
    "audit_event_record",
    "audit_events_record",
    # access
    "api_key_create",
    "api_key_mark_used",
    "api_key_revoke",
    "roles_ensure",
    "user_ensure_with_role",
    # subjects
    "consent_events_erase",
    "data_subject_ensure_many",
    "data_subject_erase",
    # purposes
    "COMPATIBILITY_FACTORS",
    "data_category_create",
    "data_category_update",
    "data_subject_category_create",
    "data_subject_category_update",
    "purpose_compatibility_check",
    "purpose_compatibility_declare",
    "purpose_create",
    # activities
    "PROCESSING_ACTIVITY_FIELDS",
    "REQUIRED_ACTIVITY_FIELDS",
    "processing_activity_create",
    "processing_activity_update",
    "processing_activity_validate",
    # consent
    "CONSENT_CLOCK_TOLERANCE",
    "CONSENT_EVENT_KEYS",
    "CONSENT_EVIDENCE_KEYS",
    "MAX_CONSENT_BATCH",
    "consent_event_derive_id",
    "consent_events_ingest",
    "ip_truncate",
    # limits
    "processing_objection_compelling_grounds_record",
    "processing_objection_create",
    "processing_restriction_create",
    "processing_restriction_lift",
]
