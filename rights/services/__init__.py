"""Services of the erasure workflow (GDPR Art. 17, 12(3), 12(4), 19). Keyword-only,
atomic, audited; every refusal is a ServiceError (400) or ServiceConflict (409) and
leaves nothing changed.

Execution lives in ``rights.execution``.

One module per concept (as Zulip split its actions):

- ``intake``: the receipt hash of a person, receiving a request (answered at once when no
  data are held);
- ``decisions``: verify, extend, reject (with the Art. 12(4) notice), override a model's
  remediation;
- ``dispatch``: start execution and send it to a worker after the commit; the outbox sweep;
- ``withdrawals``: Art. 17(1)(b), a consent withdrawal opens a request;
- ``objections``: Art. 17(1)(c), an objection (Art. 21) opens a request;
- ``requests``: the requests under Art. 15, 16, 18, 20 and 21 (receive, verify, extend,
  reject, execute, lift a restriction; the answer files built in a task);
- ``recipients``: Art. 19, the recipients to tell of an erasure, rectification or
  restriction, and the DPO's record of telling each;
- ``workflow``: the intake, verification, extension and refusal rules every right shares;
- ``access``: answering the rights of access (Art. 15) and portability (Art. 20);
- ``_common``: the small helpers they share.

Callers import from here; ServiceError and ServiceConflict, the refusals, are re-exported
for them as the single module did.
"""

from governance.services import ServiceConflict, ServiceError
from rights.services.access import subject_access_answer, subject_portability_export
from rights.services.answers import answer_files, rights_answers_purge
from rights.services.decisions import (
    erasure_request_extend,
    erasure_request_override_remediation,
    erasure_request_reject,
    erasure_request_verify,
    refusal_notice_text,
)
from rights.services.dispatch import (
    erasure_request_dispatch_on_commit,
    erasure_request_execute_start,
    erasure_requests_redispatch,
)
from rights.services.intake import NO_DATA_HELD_ANSWER, erasure_receipt_hash, erasure_request_receive
from rights.services.objections import erasure_request_open_for_objection
from rights.services.recipients import erasure_request_recipient_notified, rights_request_recipient_notified
from rights.services.requests import (
    rights_request_execute,
    rights_request_extend,
    rights_request_receive,
    rights_request_reject,
    rights_request_restriction_lift,
    rights_request_verify,
)
from rights.services.withdrawals import (
    erasure_request_open_for_withdrawal,
    erasure_requests_open_for_withdrawals,
    erasure_requests_open_for_withdrawals_sweep,
)

__all__ = [
    "answer_files",
    "ServiceConflict",
    "ServiceError",
    "NO_DATA_HELD_ANSWER",
    "erasure_receipt_hash",
    "erasure_request_dispatch_on_commit",
    "erasure_request_execute_start",
    "erasure_request_extend",
    "erasure_request_open_for_objection",
    "erasure_request_open_for_withdrawal",
    "erasure_request_override_remediation",
    "erasure_request_receive",
    "erasure_request_reject",
    "erasure_request_verify",
    "erasure_requests_open_for_withdrawals",
    "erasure_requests_open_for_withdrawals_sweep",
    "erasure_requests_redispatch",
    "refusal_notice_text",
    "rights_answers_purge",
    "rights_request_execute",
    "rights_request_extend",
    "rights_request_receive",
    "erasure_request_recipient_notified",
    "rights_request_recipient_notified",
    "rights_request_reject",
    "rights_request_restriction_lift",
    "rights_request_verify",
    "subject_access_answer",
    "subject_portability_export",
]
