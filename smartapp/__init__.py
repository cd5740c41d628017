"""PeerBridge web app: the Flask factory lives in smartapp.app; the suggestion engine
(smartapp.suggest.engine) and the referral service are plain Python that import no Flask."""
