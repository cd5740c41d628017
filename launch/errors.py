"""Launch failures with two messages: one a clinician can act on, one for IT's log (no tokens)."""

from __future__ import annotations

import re

# What an EHR's `error` / `error_description` may carry onto a page and into a log: printable
# characters (RFC 6749 restricts both to printable ASCII), cut to a readable length.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def ehr_text(value: object, limit: int = 300) -> str:
    text = _UNPRINTABLE.sub("", str(value or "")).strip()
    return text[: limit - 1] + "…" if len(text) > limit else text


class LaunchError(Exception):
    """A launch step failed. `user_message` goes on the page, `log_message` to the log.

    `status` is the HTTP status of the page; `relaunch` says the way out is to open
    PeerBridge again from the EHR; `kind` names the failure for the page and the log;
    `retry_url`, when set, is where the user can try again (e.g. in a new window).
    For IT (log and the page's details): `step` (authorize, token, jwks, discovery, id_token)
    and the EHR's own `ehr_error` / `ehr_description` when it sent them.
    """

    def __init__(
        self,
        user_message: str,
        log_message: str,
        *,
        status: int = 400,
        relaunch: bool = True,
        kind: str = "launch_failed",
        retry_url: str = "",
        step: str = "",
        ehr_error: str = "",
        ehr_description: str = "",
    ) -> None:
        super().__init__(log_message)
        self.user_message = user_message
        self.log_message = log_message
        self.status = status
        self.relaunch = relaunch
        self.kind = kind
        self.retry_url = retry_url  # e.g. the launch URL to open in a new window
        self.step = step
        self.ehr_error = ehr_text(ehr_error, 80)
        self.ehr_description = ehr_text(ehr_description)


class AuthorizationServerError(LaunchError):
    """The EHR's authorization server refused (`error=` callback, invalid_grant, invalid_client)
    or could not be reached."""

    def __init__(
        self,
        user_message: str,
        log_message: str,
        *,
        error: str = "",
        step: str = "",
        description: str = "",
    ) -> None:
        super().__init__(
            user_message,
            log_message,
            status=502 if not error else 400,
            kind=error or "server_unreachable",
            step=step,
            ehr_error=error,
            ehr_description=description,
        )
        self.error = error
