"""Launch failures with two messages: one a clinician can act on, one for IT's log (no tokens)."""

from __future__ import annotations


class LaunchError(Exception):
    """A launch step failed. `user_message` goes on the page, `log_message` to the log.

    `status` is the HTTP status of the page; `relaunch` says the way out is to open
    PeerBridge again from the EHR; `kind` names the failure for the page and the log;
    `retry_url`, when set, is where the user can try again (e.g. in a new window).
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
    ) -> None:
        super().__init__(log_message)
        self.user_message = user_message
        self.log_message = log_message
        self.status = status
        self.relaunch = relaunch
        self.kind = kind
        self.retry_url = retry_url  # e.g. the launch URL to open in a new window


class AuthorizationServerError(LaunchError):
    """The EHR's authorization server refused (`error=` callback, invalid_grant, invalid_client)
    or could not be reached."""

    def __init__(self, user_message: str, log_message: str, *, error: str = "") -> None:
        super().__init__(
            user_message,
            log_message,
            status=502 if not error else 400,
            kind=error or "server_unreachable",
        )
        self.error = error
