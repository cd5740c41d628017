"""PeerBridge's database: the tables (`models`) and their Alembic migrations (`migrations/`),
applied once by `peerbridge migrate`, `serve` and `demo` before any worker starts (`schema`)."""
