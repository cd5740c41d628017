"""FHIR R4 <-> PeerBridge domain: Patient and Conditions in, directory programs both ways,
referrals out as ServiceRequest / Task / Provenance, and the code maps as data."""
