"""(placeholder: filled in by its issue)"""

from __future__ import annotations

from flask import Flask

from config import Settings


def init_app(app: Flask, settings: Settings) -> None:
    pass
