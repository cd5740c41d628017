"""`peerbridge check [--profile NAME]`: checks a target EHR against what PeerBridge needs before
go-live, and prints a pass/fail table with the fix for each failure (exit code 1 on any failure).

Checks each FHIR base in `smart.iss_allowlist`: SMART discovery (through `launch.discovery`, the
one discovery client), the capabilities and client authentication the launch needs, the
CapabilityStatement (Condition search, ServiceRequest create, conditional create, transaction),
and whether the EHR accepts the configured client id and redirect URI; plus the app's own URLs.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import requests

from config import Settings, load_settings
from fhir_mappings.fhir_client import FhirClient, FhirError
from launch.authorize import build_authorization
from launch.discovery import SMART_PATH, Discovery, SmartConfiguration
from launch.errors import LaunchError, ehr_text
from launch.guarded_http import guarded_session
from launch.scopes import requested_scopes

PASS, WARN, FAIL = "pass", "warn", "FAIL"

# What each client_auth setting needs from the server: SMART capability, token endpoint method.
_AUTH_NEEDS = {
    "public": ("client-public", ""),
    "client_secret_basic": ("client-confidential-symmetric", "client_secret_basic"),
    "private_key_jwt": ("client-confidential-asymmetric", "private_key_jwt"),
}


@dataclass(frozen=True)
class CheckResult:
    """One line of the table: what was checked, the outcome, what was seen, how to fix it."""

    name: str
    status: str  # PASS, WARN or FAIL
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def run_check(args: argparse.Namespace) -> int:
    settings = load_settings(profile=getattr(args, "profile", None))
    results = check_settings(settings)
    print(render_table(results, settings))
    return 1 if any(r.failed for r in results) else 0


def check_settings(
    settings: Settings, *, http: requests.Session | None = None
) -> list[CheckResult]:
    """Every check for the configured app URLs and each allow-listed EHR."""
    http = http or guarded_session()  # deadlines enforced by the guarded layer's watchdog
    results = check_app_urls(settings)
    if not settings.smart.iss_allowlist:
        results.append(
            CheckResult(
                "smart.iss_allowlist",
                FAIL,
                "no EHR FHIR base configured",
                "set PEERBRIDGE_SMART_ISS_ALLOWLIST='[\"https://ehr.example.org/fhir\"]' "
                "or pick a profile with --profile",
            )
        )
    for iss in settings.smart.iss_allowlist:
        results.extend(check_ehr(settings, iss, http=http))
    return results


def check_app_urls(settings: Settings) -> list[CheckResult]:
    """The launch and redirect URLs PeerBridge will send, and the cookie settings they imply."""
    public = settings.app.public_url
    if not public:
        return [
            CheckResult(
                "app.public_url",
                FAIL,
                "not set, so there is no launch URL or redirect URI to register",
                "set PEERBRIDGE_APP_PUBLIC_URL to the https URL browsers use to reach PeerBridge",
            )
        ]
    parts = urlsplit(public)
    results: list[CheckResult] = []
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        results.append(
            CheckResult(
                "app.public_url",
                FAIL,
                f"{public!r} is not an absolute http(s) URL without query or fragment",
                "give the base URL only, e.g. https://peerbridge.example.org",
            )
        )
        return results
    loopback = _is_loopback(parts.hostname or "")
    if parts.scheme == "http" and not loopback:
        results.append(
            CheckResult(
                "app.public_url",
                FAIL,
                f"{public} is plain http on a non-loopback host",
                "serve PeerBridge over https (EHRs reject http redirect URIs; tokens and the "
                "session cookie must not cross the network in clear)",
            )
        )
    else:
        results.append(
            CheckResult(
                "launch and redirect URLs",
                PASS,
                f"launch {settings.launch_url}, redirect {settings.redirect_uri}",
            )
        )
    secure = settings.app.session_cookie_secure
    if parts.scheme == "http" and secure:
        results.append(
            CheckResult(
                "app.session_cookie_secure",
                FAIL,
                "the session cookie is Secure but PeerBridge is served over http: browsers "
                "never send it back, so every launch fails at /callback",
                "serve over https, or (loopback demos only) set "
                "PEERBRIDGE_APP_SESSION_COOKIE_SECURE=false",
            )
        )
    elif parts.scheme == "https" and not secure:
        results.append(
            CheckResult(
                "app.session_cookie_secure",
                FAIL,
                "served over https but the session cookie is not Secure; inside the EHR's "
                "iframe it then falls back to SameSite=Lax and is dropped",
                "set PEERBRIDGE_APP_SESSION_COOKIE_SECURE=true",
            )
        )
    else:
        results.append(CheckResult("app.session_cookie_secure", PASS, f"{secure}"))
    return results


def check_ehr(settings: Settings, iss: str, *, http: requests.Session) -> list[CheckResult]:
    """Discovery, capabilities, client authentication, CapabilityStatement and registration."""
    timeout = settings.fhir.timeout_seconds
    discovery = Discovery(http, ttl_seconds=0, timeout=timeout)
    label = f"[{iss}]"
    try:
        config = discovery.smart_configuration(iss)
    except LaunchError as exc:
        return [
            CheckResult(
                f"{label} discovery",
                FAIL,
                exc.log_message,
                f"make {iss}/{SMART_PATH} answer a SMART configuration (JSON, no auth), or "
                "correct the FHIR base in smart.iss_allowlist",
            )
        ]
    results = [CheckResult(f"{label} discovery", PASS, f"{iss}/{SMART_PATH}")]
    results.extend(_capability_checks(settings, config, label))
    results.extend(_auth_checks(settings, config, discovery.document(_smart_url(iss)), label))
    results.extend(_fhir_checks(FhirClient(iss, timeout=timeout, session=http), label))
    results.extend(_frame_check(settings, iss, label))
    results.append(_registration_check(settings, config, http, label))
    return results


def _smart_url(iss: str) -> str:
    return f"{iss.rstrip('/')}/{SMART_PATH}"


def _capability_checks(
    settings: Settings, config: SmartConfiguration, label: str
) -> list[CheckResult]:
    caps = config.capabilities
    results: list[CheckResult] = []
    results.append(
        _present(
            f"{label} capability launch-ehr",
            "launch-ehr" in caps,
            FAIL,
            "the EHR cannot launch PeerBridge from a chart",
            "enable SMART EHR launch for this app in the EHR (or use a FHIR base that offers it)",
        )
    )
    # Standalone launch is how PeerBridge opens outside the chart; only needed with default_iss.
    results.append(
        _present(
            f"{label} capability launch-standalone",
            "launch-standalone" in caps,
            FAIL if settings.smart.default_iss == config.iss else WARN,
            "standalone launch (PeerBridge opened directly) is not offered",
            "enable standalone launch, or unset smart.default_iss",
        )
    )
    if config.supports_s256:
        results.append(CheckResult(f"{label} PKCE S256", PASS, "advertised"))
    elif settings.smart.allow_missing_s256:
        results.append(
            CheckResult(
                f"{label} PKCE S256",
                WARN,
                "not advertised; allowed by smart.allow_missing_s256 (unsafe)",
                'ask the EHR vendor to advertise code_challenge_methods_supported ["S256"]',
            )
        )
    else:
        results.append(
            CheckResult(
                f"{label} PKCE S256",
                FAIL,
                "code_challenge_methods_supported lacks S256, so PeerBridge refuses to sign in",
                "ask the EHR vendor to enable PKCE S256 (SMART 2 requires it); "
                "smart.allow_missing_s256 = true overrides this, unsafely",
            )
        )
    results.append(
        _present(
            f"{label} capability permission-v2",
            config.v2_scopes,
            WARN,
            "SMART v2 scopes not advertised: PeerBridge asks for v1 .read/.write scopes, "
            "which grant more than it needs",
            "enable SMART v2 scopes (permission-v2) in the EHR if it offers them",
        )
    )
    return results


def _auth_checks(
    settings: Settings, config: SmartConfiguration, doc: dict[str, object], label: str
) -> list[CheckResult]:
    method = settings.smart.client_auth
    capability, endpoint_method = _AUTH_NEEDS[method]
    name = f"{label} client auth {method}"
    missing: list[str] = []
    if config.capabilities and capability not in config.capabilities:
        missing.append(f"capability {capability}")
    if endpoint_method and config.token_auth_methods and method not in config.token_auth_methods:
        missing.append(f"token_endpoint_auth_methods_supported {method}")
    if method == "private_key_jwt":
        algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
        alg = settings.smart.signing_alg
        if isinstance(algs, list) and algs and alg not in algs:
            missing.append(f"signing alg {alg} (offered: {', '.join(map(str, algs))})")
    if missing:
        return [
            CheckResult(
                name,
                FAIL,
                "not offered: " + "; ".join(missing),
                "register PeerBridge with a client authentication this EHR offers and set "
                "smart.client_auth (and smart.signing_alg) to match",
            )
        ]
    return [CheckResult(name, PASS, f"offered ({capability})")]


def _fhir_checks(client: FhirClient, label: str) -> list[CheckResult]:
    try:
        statement = client.capabilities()
    except FhirError as exc:
        return [
            CheckResult(
                f"{label} CapabilityStatement",
                FAIL,
                f"GET metadata failed: {exc}",
                "the FHIR base must serve /metadata; check the URL in smart.iss_allowlist",
            )
        ]
    version = str(statement.get("fhirVersion", ""))
    results = [
        _present(
            f"{label} FHIR version",
            version.startswith("4.0"),
            FAIL,
            f"fhirVersion {version or '(missing)'}; PeerBridge speaks FHIR R4 (4.0.x)",
            "use the EHR's R4 endpoint as the FHIR base",
            ok_detail=version,
        )
    ]
    needs = (
        ("Condition", "search-type", "Condition search", FAIL, "PeerBridge cannot read the chart"),
        ("ServiceRequest", "create", "ServiceRequest create", FAIL, "referrals cannot be written"),
        (
            "ServiceRequest",
            "conditional-create",
            "ServiceRequest conditional create",
            WARN,
            "PeerBridge falls back to search-then-create, which a concurrent retry can race",
        ),
        (
            "",
            "transaction",
            "transaction",
            WARN,
            "PeerBridge writes the referral entry by entry instead of atomically",
        ),
    )
    for rtype, interaction, title, severity, consequence in needs:
        results.append(
            _present(
                f"{label} {title}",
                client.supports(rtype, interaction),
                severity,
                f"not in the CapabilityStatement: {consequence}",
                f"enable {title} for PeerBridge's client in the EHR",
            )
        )
    return results


def _frame_check(settings: Settings, iss: str, label: str) -> list[CheckResult]:
    parts = urlsplit(iss)
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        _present(
            f"{label} frame-ancestors",
            origin in settings.app.frame_ancestors,
            WARN,
            f"{origin} may not frame PeerBridge: an EHR that embeds apps shows a blank frame",
            "add the EHR's web origin(s) to app.frame_ancestors "
            "(the FHIR server's origin is often not the EHR's)",
        )
    ]


@dataclass(frozen=True)
class _Probe:
    """How the authorization endpoint answered one (never completed) authorization request."""

    accepted: bool
    status: int
    error: str = ""
    description: str = ""
    sign_in_page: bool = False  # accepted by showing its own page rather than redirecting back

    @property
    def refusal(self) -> str:
        words = f"{self.status}" + (f" error={self.error}" if self.error else "")
        return words + (f": {self.description}" if self.description else "")


_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})


def _probe(
    settings: Settings, config: SmartConfiguration, http: requests.Session, client_id: str
) -> _Probe:
    request, _ = build_authorization(
        config,
        client_id=client_id,
        redirect_uri=settings.redirect_uri,
        launch="",
        binding="peerbridge-check",
        refresh_scope=settings.smart.refresh_scope,
        allow_missing_s256=True,
    )
    timeout = settings.fhir.timeout_seconds
    if request.use_post:
        response = http.post(
            request.endpoint, data=request.params, allow_redirects=False, timeout=timeout
        )
    else:
        response = http.get(request.redirect_url, allow_redirects=False, timeout=timeout)
    location = response.headers.get("Location", "")
    if response.is_redirect and location.startswith(settings.redirect_uri):
        query = dict(parse_qsl(urlsplit(location).query))
        if "error" in query:
            error = ehr_text(query["error"], 80)
            return _Probe(
                False, response.status_code, error, ehr_text(query.get("error_description"))
            )
        return _Probe(True, response.status_code)
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        return _Probe(
            False,
            response.status_code,
            ehr_text(body.get("error"), 80),
            ehr_text(body.get("error_description")),
        )
    return _Probe(True, response.status_code, sign_in_page=True)


def _registration_check(
    settings: Settings, config: SmartConfiguration, http: requests.Session, label: str
) -> CheckResult:
    """Start a standalone authorization request (never completed) and see whether the EHR accepts
    the client id and redirect URI: a refusal is an error page, never a redirect to us (RFC 6749
    4.1.2.1), or a redirect to us carrying `error`. A second request with a client id nobody
    registered tells a sandbox that accepts any client (the SMART launcher) and a refusal of
    the request itself from a refusal of PeerBridge's registration."""
    name = f"{label} client registration"
    if not settings.app.public_url:
        return CheckResult(name, WARN, "skipped: app.public_url is not set")
    try:
        ours = _probe(settings, config, http, settings.smart.client_id)
        stranger = _probe(settings, config, http, f"peerbridge-check-{secrets.token_hex(6)}")
    except requests.RequestException as exc:
        return CheckResult(
            name,
            FAIL,
            f"authorization endpoint unreachable ({type(exc).__name__})",
            f"check that {config.authorization_endpoint} is reachable from browsers",
        )
    fix = (
        f"register client id {settings.smart.client_id!r} with redirect URI "
        f"{settings.redirect_uri} and launch URL {settings.launch_url} in the EHR"
    )
    if ours.accepted and stranger.accepted:
        return CheckResult(
            name,
            PASS,
            "accepted; this server accepts any client id (a test sandbox such as the SMART "
            "launcher), so there is nothing to register",
        )
    if ours.accepted:
        page = " (sign-in page shown)" if ours.sign_in_page else ""
        return CheckResult(name, PASS, f"client id and redirect URI accepted{page}")
    same_for_anyone = (stranger.status, stranger.error) == (ours.status, ours.error)
    if same_for_anyone and ours.error and ours.error not in _CLIENT_ERRORS:
        # Not about who PeerBridge is: the request itself was refused, for any client.
        return CheckResult(
            name,
            WARN,
            f"the EHR refused the standalone sign-in request for any client id ({ours.refusal}),"
            " so registration could not be checked",
            "a launch-specific refusal: try an EHR launch; against the SMART launcher, a "
            "standalone launch needs the launcher's 'sim' FHIR URL as iss (docs/deploy.md)",
        )
    if ours.error:
        return CheckResult(name, FAIL, f"the EHR refused the request ({ours.refusal})", fix)
    return CheckResult(
        name,
        FAIL,
        f"the authorization endpoint refused the request ({ours.refusal})",
        fix,
    )


def _present(
    name: str,
    ok: bool,
    severity: str,
    problem: str,
    fix: str,
    *,
    ok_detail: str = "supported",
) -> CheckResult:
    return CheckResult(name, PASS, ok_detail) if ok else CheckResult(name, severity, problem, fix)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def render_table(results: Iterable[CheckResult], settings: Settings | None = None) -> str:
    """The pass/fail table, a summary, and what to register with the EHR."""
    results = list(results)
    width = min(60, max((len(r.name) for r in results), default=10))
    lines = [f"{'CHECK':<{width}}  {'RESULT':<6}  DETAIL"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<6}  {r.detail}")
        if r.fix and r.status != PASS:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {r.fix}")
    failed = sum(r.failed for r in results)
    warned = sum(r.status == WARN for r in results)
    lines.append("")
    lines.append(
        f"{len(results)} checks: {len(results) - failed - warned} passed, {warned} warnings, "
        f"{failed} failed"
    )
    if settings is not None and settings.app.public_url:
        lines.append("")
        lines.append("Register with the EHR:")
        lines.append(f"  client id      {settings.smart.client_id} ({settings.smart.client_auth})")
        lines.append(f"  launch URL     {settings.launch_url}")
        lines.append(f"  redirect URI   {settings.redirect_uri}")
        if settings.smart.client_auth == "private_key_jwt":
            lines.append(f"  JWKS URL       {settings.jwks_url}")
        scopes = requested_scopes(
            ehr_launch=True, v2=True, refresh_scope=settings.smart.refresh_scope
        )
        lines.append(f"  scopes         {scopes}")
    return "\n".join(lines)
