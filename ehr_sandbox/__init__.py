"""The PeerBridge dev EHR: a strict FHIR R4 server, SMART authorization server and EHR pages."""
