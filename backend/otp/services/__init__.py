"""The rules of the service, one module per concern, re-exported here so callers import `otp.services`.

- issuing: /register/ and /login/: throttle, store a code's hash, enqueue its delivery.
- verifying: /verify-otp/: trade a code for tokens.
- delivering: the worker's side: claim, send through a provider, record; status callbacks.
- housekeeping: beat's periodic purge (codes, stale and old deliveries, tokens, device tokens, sessions, admin
  access logs).
Accounts and tokens are users.services'.
"""
from otp.services.delivering import (CODE_EXPIRED_ERROR, DeliveryRetry, code_withdraw, delivery_retry_countdown, delivery_send,
                                     delivery_status_callback_record, delivery_status_record)
from otp.services.housekeeping import (admin_access_log_purge, code_purge, delivery_expire_stale, delivery_purge,
                                       device_token_purge, maintenance_run, session_purge, token_blacklist_flush)
from otp.services.issuing import DELIVERY_PAYLOAD_VERSION, code_issue, code_request, delivery_enqueue, delivery_payload
from otp.services.delivering import KEY_UNKNOWN_ERROR, PAYLOAD_REFUSED_ERROR, delivery_refuse
from otp.services.verifying import SignIn, code_verify
from users.services import TokenPair, token_pair_issue, token_revoke

__all__ = [
    "CODE_EXPIRED_ERROR", "DELIVERY_PAYLOAD_VERSION", "DeliveryRetry", "TokenPair", "code_issue", "code_purge",
    "code_withdraw",
    "code_request", "code_verify", "delivery_enqueue", "delivery_expire_stale", "delivery_retry_countdown",
    "delivery_send", "delivery_status_callback_record", "delivery_status_record", "maintenance_run",
    "token_blacklist_flush", "token_pair_issue", "token_revoke",
    "delivery_purge", "device_token_purge", "SignIn", "session_purge", "admin_access_log_purge", "PAYLOAD_REFUSED_ERROR", "delivery_payload", "delivery_refuse",
    "KEY_UNKNOWN_ERROR",
]
