"""SMART App Launch 2.2 client: discovery, PKCE, authorize, token, refresh, client auth, context.

Framework-free: it speaks HTTP through `requests` and JOSE through authlib, and never imports Flask.
"""
