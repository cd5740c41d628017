"""Typed settings: config/default.toml, then a profile, then PEERBRIDGE_* environment variables.

Loaded once at start and passed into the app; nothing reads the environment at import time.
A missing or invalid setting raises SettingsError naming the setting, so the process stops early.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_FILE = CONFIG_DIR / "default.toml"
PROFILE_DIR = CONFIG_DIR / "profiles"
DEFAULT_DIRECTORY = CONFIG_DIR / "directory" / "programs.json"
ENV_PREFIX = "PEERBRIDGE_"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class AppSettings:
    public_url: str = ""
    secret_key: str = field(default="", repr=False)
    secret_key_file: str = ""
    frame_ancestors: tuple[str, ...] = ()
    state_dir: str = "var"
    session_backend: str = "sqlite"
    redis_url: str = ""
    database_url: str = ""
    session_cookie_secure: bool = True
    session_cookie_persistent: bool = False
    session_lifetime_minutes: int = 480
    token_key: str = field(default="", repr=False)
    token_key_file: str = ""
    hsts_seconds: int = 0
    log_level: str = "INFO"
    log_format: str = "json"


@dataclass(frozen=True)
class SmartSettings:
    client_id: str = "peerbridge"
    client_auth: str = "public"
    client_secret: str = field(default="", repr=False)
    client_secret_file: str = ""
    private_key_files: tuple[str, ...] = ()
    signing_alg: str = "RS384"
    iss_allowlist: tuple[str, ...] = ()
    default_iss: str = ""
    refresh_scope: str = "online_access"
    allow_missing_s256: bool = False
    discovery_ttl_seconds: int = 3600
    refresh_margin_seconds: int = 60
    state_ttl_seconds: int = 600
    max_pending_authorizations: int = 10000


@dataclass(frozen=True)
class FhirSettings:
    timeout_seconds: float = 10.0
    page_size: int = 100
    page_deadline_seconds: float = 20.0
    max_pages: int = 20
    max_response_mb: int = 10

    @property
    def max_response_bytes(self) -> int:
        return self.max_response_mb * 1024 * 1024


@dataclass(frozen=True)
class DirectorySettings:
    source: str = "file"
    path: str = ""
    fhir_base: str = ""
    editors: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()
    stale_months: int = 12
    subscriptions: tuple[str, ...] = ()
    subscription_hosts: tuple[str, ...] = ()
    refresh_minutes: int = 360
    publish: bool = True


@dataclass(frozen=True)
class ReferralSettings:
    initial_status: str = "draft"
    followup_days: int = 14
    identifier_system: str = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
    retry_hours: float = 24.0
    retry_base_seconds: float = 2.0
    retry_max_delay_seconds: float = 60.0
    lease_seconds: float = 30.0
    drain_interval_seconds: float = 2.0
    stuck_after_minutes: float = 5.0
    retention_days: float = 30.0
    user_role: str = "auto"


@dataclass(frozen=True)
class WorkspaceSettings:
    enabled: bool = False
    program_id: str = "family-partner-program"
    program_name: str = "Family Partner Program"
    owners: tuple[str, ...] = (
        "Organization/family-partner-program",
        "HealthcareService/family-partner-program",
    )
    coordinators: tuple[str, ...] = ()
    lead: str = ""
    social_workers: tuple[str, ...] = ()
    coordinator_role_codes: tuple[str, ...] = ("peer-program-coordinator",)
    document_in_ehr: bool = True
    check_days: int = 10
    reminder_days: int = 21
    background_check_valid_days: int = 730
    scopes: tuple[str, ...] = ()
    roster_file: str = ""


@dataclass(frozen=True)
class CdsClient:
    iss: str
    jwks_url: str
    # JWT `jku` header values accepted from this EHR; empty means only jwks_url itself.
    jku: tuple[str, ...] = ()
    # FHIR bases this EHR may name as `fhirServer`; the `fhirAuthorization` token goes to no
    # other server.
    fhir_servers: tuple[str, ...] = ()

    @property
    def allowed_jkus(self) -> tuple[str, ...]:
        return self.jku or (self.jwks_url,)


@dataclass(frozen=True)
class CdsSettings:
    enabled: bool = True
    trusted_clients: tuple[CdsClient, ...] = ()


@dataclass(frozen=True)
class BackendClient:
    """A SMART Backend Services registration with one EHR (iss): its own client id and keys."""

    iss: str
    client_id: str
    private_key_files: tuple[str, ...]
    scope: str = "system/ServiceRequest.rs system/Task.rs system/Patient.rs"


@dataclass(frozen=True)
class BackendSettings:
    # Off: the worklist spans patients only through the user's own user/ scopes.
    worklist: bool = False
    clients: tuple[BackendClient, ...] = ()

    def client_for(self, iss: str) -> BackendClient | None:
        """The registration for exactly this iss, when backend reads are on."""
        if not self.worklist:
            return None
        return next((c for c in self.clients if c.iss == iss), None)


@dataclass(frozen=True)
class Settings:
    app: AppSettings = AppSettings()
    smart: SmartSettings = SmartSettings()
    fhir: FhirSettings = FhirSettings()
    directory: DirectorySettings = DirectorySettings()
    referrals: ReferralSettings = ReferralSettings()
    cds: CdsSettings = CdsSettings()
    workspace: WorkspaceSettings = WorkspaceSettings()
    backend: BackendSettings = BackendSettings()
    profile: str = "default"

    # Derived values, so every module agrees on them.
    @property
    def state_path(self) -> Path:
        return Path(self.app.state_dir)

    @property
    def database_url(self) -> str:
        return self.app.database_url or f"sqlite:///{self.state_path / 'peerbridge.sqlite3'}"

    @property
    def directory_path(self) -> Path:
        return Path(self.directory.path) if self.directory.path else DEFAULT_DIRECTORY

    @property
    def redirect_uri(self) -> str:
        return f"{self.app.public_url}/callback"

    @property
    def launch_url(self) -> str:
        return f"{self.app.public_url}/launch"

    @property
    def jwks_url(self) -> str:
        return f"{self.app.public_url}/.well-known/jwks.json"

    def secret_key(self) -> str:
        return _secret(self.app.secret_key, self.app.secret_key_file, "app.secret_key")

    def client_secret(self) -> str:
        return _secret(
            self.smart.client_secret, self.smart.client_secret_file, "smart.client_secret"
        )

    def token_key(self) -> bytes:
        """The Fernet key that encrypts tokens at rest: `app.token_key(_file)`, else one derived
        from the secret key (so every instance sharing the secret key agrees on it)."""
        if not (self.app.token_key or self.app.token_key_file):
            secret = self.secret_key().encode()
            derived = hashlib.sha256(b"peerbridge-token-key|" + secret).digest()
            return base64.urlsafe_b64encode(derived)
        key = _secret(self.app.token_key, self.app.token_key_file, "app.token_key").encode()
        try:
            if len(base64.urlsafe_b64decode(key)) == 32:
                return key
        except (ValueError, binascii.Error):
            pass
        raise SettingsError(
            "app.token_key: not a Fernet key (32 url-safe base64 bytes; make one with "
            '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())"`)'
        )


_SECTIONS: dict[str, type] = {
    "app": AppSettings,
    "smart": SmartSettings,
    "fhir": FhirSettings,
    "directory": DirectorySettings,
    "referrals": ReferralSettings,
    "cds": CdsSettings,
    "workspace": WorkspaceSettings,
    "backend": BackendSettings,
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "app.session_backend": ("sqlite", "redis"),
    "app.log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "app.log_format": ("json", "text"),
    "smart.client_auth": ("public", "client_secret_basic", "private_key_jwt"),
    "smart.signing_alg": ("RS384", "ES384"),
    "smart.refresh_scope": ("online_access", "offline_access", ""),
    "directory.source": ("file", "fhir"),
    "referrals.initial_status": ("draft", "active"),
    "referrals.user_role": ("auto", "proposer", "completer"),
}


def load_settings(
    profile: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults, a named profile, the environment and explicit overrides.

    `profile` defaults to PEERBRIDGE_PROFILE (then "default"); `overrides` wins over everything,
    which is how tests and the demo pass ports and throwaway secrets.
    """
    env = dict(os.environ if environ is None else environ)
    profile = profile or env.get(ENV_PREFIX + "PROFILE") or "default"
    raw = _read_toml(DEFAULT_FILE)
    if profile != "default":
        profile_file = PROFILE_DIR / f"{profile}.toml"
        if not profile_file.is_file():
            known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
            raise SettingsError(
                f"PEERBRIDGE_PROFILE: no profile named {profile!r} (known: {known})"
            )
        _merge(raw, _read_toml(profile_file))
    _merge(raw, _from_environment(env, raw))
    if overrides:
        _merge(raw, {k: dict(v) for k, v in overrides.items()})
    settings = Settings(
        **{name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()},
        profile=profile,
    )
    _validate(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from exc


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for section, values in extra.items():
        if section not in _SECTIONS:
            raise SettingsError(f"unknown settings section [{section}]")
        base.setdefault(section, {}).update(values)


def _from_environment(env: Mapping[str, str], known: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "PROFILE":
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in _SECTIONS or key not in known.get(section, {}):
            raise SettingsError(f"{name}: no such setting")
        found.setdefault(section, {})[key] = _parse_env_value(name, value, known[section][key])
    return found


def _parse_env_value(name: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    if isinstance(default, list | dict):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{name}: expected a JSON list, got {value!r}") from exc
    return value


def _build_section(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = _coerce(f"{name}.{f.name}", values[f.name], getattr(cls(), f.name))
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise SettingsError(f"{name}.{sorted(unknown)[0]}: no such setting")
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise TypeError
            if key == "cds.trusted_clients":
                return tuple(
                    CdsClient(
                        iss=str(v["iss"]),
                        jwks_url=str(v["jwks_url"]),
                        jku=tuple(str(u) for u in v.get("jku", ())),
                        fhir_servers=tuple(str(u).rstrip("/") for u in v.get("fhir_servers", ())),
                    )
                    for v in value
                )
            if key == "backend.clients":
                return tuple(
                    BackendClient(
                        iss=str(v["iss"]),
                        client_id=str(v["client_id"]),
                        private_key_files=tuple(str(f) for f in v["private_key_files"]),
                        scope=str(v.get("scope") or BackendClient.scope),
                    )
                    for v in value
                )
            return tuple(str(v) for v in value)
    except (TypeError, ValueError, KeyError) as exc:
        raise SettingsError(f"{key}: invalid value {value!r}") from exc
    return value


def _validate(s: Settings) -> None:
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(s, section), name)
        if value not in allowed:
            raise SettingsError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    for base in s.smart.iss_allowlist:
        # A trailing slash is allowed: the match is exact, and Medplum's iss carries one.
        if not base.startswith(("https://", "http://")):
            raise SettingsError(f"smart.iss_allowlist: {base!r} must be an absolute URL")
    for client in s.cds.trusted_clients:
        for server in client.fhir_servers:
            if not server.startswith(("https://", "http://")):
                raise SettingsError(
                    f"cds.trusted_clients.fhir_servers: {server!r} must be an absolute URL"
                )
    for backend in s.backend.clients:
        if backend.iss not in s.smart.iss_allowlist:
            raise SettingsError(f"backend.clients: {backend.iss!r} is not in smart.iss_allowlist")
        if not backend.client_id or not backend.private_key_files:
            raise SettingsError("backend.clients: each needs client_id and private_key_files")
        if any(not t.startswith("system/") for t in backend.scope.split()):
            raise SettingsError("backend.clients.scope: only system/ scopes")
    if s.smart.default_iss and s.smart.default_iss not in s.smart.iss_allowlist:
        raise SettingsError("smart.default_iss: must also be listed in smart.iss_allowlist")
    if s.app.public_url.endswith("/"):
        raise SettingsError("app.public_url: give it without a trailing /")
    if s.app.session_backend == "redis" and not s.app.redis_url:
        raise SettingsError("app.redis_url: required when app.session_backend is 'redis'")
    if s.smart.client_auth == "private_key_jwt" and not s.smart.private_key_files:
        raise SettingsError("smart.private_key_files: required for client_auth private_key_jwt")
    if s.smart.client_auth == "client_secret_basic" and not (
        s.smart.client_secret or s.smart.client_secret_file
    ):
        raise SettingsError("smart.client_secret: required for client_auth client_secret_basic")
    if s.directory.source == "fhir" and not s.directory.fhir_base:
        raise SettingsError("directory.fhir_base: required when directory.source is 'fhir'")
    if not 1 <= s.referrals.followup_days <= 90:
        raise SettingsError("referrals.followup_days: must be between 1 and 90")
    if not 7 <= s.workspace.check_days <= 14:
        raise SettingsError("workspace.check_days: must be between 7 and 14 (one to two weeks)")
    if s.workspace.reminder_days <= s.workspace.check_days:
        raise SettingsError("workspace.reminder_days: must come after workspace.check_days")
    r = s.referrals
    if r.retry_hours < 24:
        raise SettingsError("referrals.retry_hours: must be at least 24 (an outage can last a day)")
    if not 0 <= r.retry_base_seconds <= r.retry_max_delay_seconds:
        raise SettingsError("referrals.retry_base_seconds: must be between 0 and retry_max_delay")
    if not 1 <= r.lease_seconds <= 600:
        raise SettingsError("referrals.lease_seconds: must be between 1 and 600")
    if not 0.05 <= r.drain_interval_seconds <= 60:
        raise SettingsError("referrals.drain_interval_seconds: must be between 0.05 and 60")
    if r.retention_days < 0:
        raise SettingsError("referrals.retention_days: must be 0 (keep) or more")
    if s.fhir.page_size < 1:
        raise SettingsError("fhir.page_size: must be positive")
    for key in ("timeout_seconds", "page_deadline_seconds", "max_pages", "max_response_mb"):
        if getattr(s.fhir, key) <= 0:
            raise SettingsError(f"fhir.{key}: must be positive")
    if s.smart.max_pending_authorizations < 1:
        raise SettingsError("smart.max_pending_authorizations: must be positive")
    if s.app.hsts_seconds < 0:
        raise SettingsError("app.hsts_seconds: must be 0 (off) or more")
    if s.app.hsts_seconds and s.app.public_url.startswith("http://"):
        raise SettingsError("app.hsts_seconds: HSTS needs an https app.public_url")


def require_serving(s: Settings) -> None:
    """Settings that only matter when serving requests (not for `suggest` or `directory`)."""
    if not s.app.public_url:
        raise SettingsError("app.public_url: required to serve (PEERBRIDGE_APP_PUBLIC_URL)")
    if not s.smart.iss_allowlist:
        raise SettingsError("smart.iss_allowlist: list at least one EHR FHIR base URL")
    s.secret_key()


MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 12


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (127.0.0.0/8, ::1, localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_unsafe(s: Settings) -> None:
    """Stop a production start on settings that would expose tokens or PHI, naming the setting.
    Plain HTTP is allowed only on loopback (local runs and the demo)."""
    require_serving(s)
    public = s.app.public_url
    if public.startswith("http://") and not is_loopback(public):
        raise SettingsError(
            f"app.public_url: {public!r} is plain http on a non-loopback host; serve PeerBridge "
            "over https (tokens and PHI cross this connection)"
        )
    for iss in s.smart.iss_allowlist:
        if iss.startswith("http://") and not is_loopback(iss):
            raise SettingsError(
                f"smart.iss_allowlist: {iss!r} is plain http; an EHR's FHIR base must be https "
                "(the bearer token is sent to it)"
            )
    for origin in s.app.frame_ancestors:
        if "*" == origin.strip() or origin.strip().rstrip(":") in ("http", "https", "data"):
            raise SettingsError(
                f"app.frame_ancestors: {origin!r} lets any site frame PeerBridge; list the EHR's "
                "origins"
            )
    if public.startswith("https://") and not s.app.session_cookie_secure:
        raise SettingsError(
            "app.session_cookie_secure: must be true when app.public_url is https (otherwise "
            "the session cookie also travels over plain http)"
        )
    secret = s.secret_key()
    if len(secret) < MIN_SECRET_CHARS or len(set(secret)) < MIN_SECRET_DISTINCT:
        raise SettingsError(
            f"app.secret_key: too weak (use at least {MIN_SECRET_CHARS} random characters, e.g. "
            '`python -c "import secrets; print(secrets.token_urlsafe(48))"`)'
        )
    s.token_key()


def _secret(value: str, file: str, key: str) -> str:
    if value:
        return value
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{key}_file: cannot read {file!r} ({exc.strerror})") from exc
        if text:
            return text
        raise SettingsError(f"{key}_file: {file!r} is empty")
    raise SettingsError(f"{key}: required (set PEERBRIDGE_{key.upper().replace('.', '_')})")
