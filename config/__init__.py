"""PeerBridge configuration: typed settings, profiles and the default program directory."""

from config.settings import Settings, SettingsError, load_settings, require_serving

__all__ = ["Settings", "SettingsError", "load_settings", "require_serving"]
