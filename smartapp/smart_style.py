"""The EHR's SMART style (`smart_style_url`) as safe CSS custom properties.

Fetched server-side through the guarded HTTP layer, only from the EHR's own origin (the launch's
`iss`), without redirects, within a short total deadline and size cap, and cached per URL (a
style is not PHI); every value is checked against a strict pattern, so a hostile style JSON cannot
inject CSS.
"""

from __future__ import annotations

import re
import threading
import time

from launch.guarded_http import GuardedHttp, GuardedHttpError, UrlRefused, origin

# SMART App Launch 2.2 §Styling: the style keys PeerBridge understands, and its CSS variables.
STYLE_VARIABLES: dict[str, str] = {
    "color_background": "--bg",
    "color_error": "--error",
    "color_highlight": "--accent",
    "color_modal_backdrop": "--backdrop",
    "color_success": "--success",
    "color_text": "--fg",
    "dim_border_radius": "--radius",
    "dim_font_size": "--font-size",
    "dim_spacing_size": "--space",
    "font_family_body": "--font-body",
    "font_family_heading": "--font-heading",
}

_COLOR = re.compile(
    r"#[0-9a-fA-F]{3,8}|rgba?\(\s*[0-9.%]+\s*(,\s*[0-9.%]+\s*){2,3}\)|[a-zA-Z]{3,20}"
)
_DIM = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3})?(px|em|rem|%)?")
_FONT = re.compile(r"[A-Za-z0-9 ,\-'\"]{1,120}")

TIMEOUT_S = 2.0
MAX_BYTES = 64 * 1024
_http = GuardedHttp(timeout=TIMEOUT_S, max_bytes=MAX_BYTES)
TTL_S = 3600.0
_cache: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


def safe_value(key: str, value: object) -> str | None:
    """The value when it is a plain colour, dimension or font list for its key; else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if key.startswith("color_"):
        pattern = _COLOR
    elif key.startswith("dim_"):
        pattern = _DIM
    elif key.startswith("font_family_"):
        pattern = _FONT
    else:
        return None
    if not pattern.fullmatch(value):
        return None
    # Quotes must pair up inside a font list, or they could end the declaration early.
    if value.count('"') % 2 or value.count("'") % 2:
        return None
    return value


def style_css(style: object) -> str:
    """A `:root { ... }` rule with the sanitized values of a SMART style object ("" if none)."""
    if not isinstance(style, dict):
        return ""
    declarations = []
    for key, variable in STYLE_VARIABLES.items():
        value = safe_value(key, style.get(key))
        if value:
            declarations.append(f"{variable}: {value};")
    return ":root { " + " ".join(declarations) + " }" if declarations else ""


def fetch_style_css(url: str, ehr_base: str, *, http: GuardedHttp | None = None) -> str:
    """CSS for a style URL on the EHR's origin (that of `ehr_base`, the launch's iss), fetched
    once per hour; "" when the URL is elsewhere or unusable or the EHR fails (the page then
    keeps PeerBridge's own colours)."""
    try:
        if not url or origin(url) != origin(ehr_base):
            return ""
    except UrlRefused:
        return ""
    now = time.monotonic()
    with _lock:
        cached = _cache.get(url)
    if cached and cached[0] > now:
        return cached[1]
    css = ""
    try:
        response, body = (http or _http).get_json(url)  # no redirects
        if response.ok:
            css = style_css(body)
    except GuardedHttpError:
        css = ""
    with _lock:
        # A failure is cached briefly, so a down style endpoint does not slow every page.
        _cache[url] = (now + (TTL_S if css else 60.0), css)
    return css
