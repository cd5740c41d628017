"""The typed launch context a page works with: who, which patient, what was granted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from launch.scopes import missing_abilities, permissions


@dataclass(frozen=True)
class LaunchContext:
    handle: str
    iss: str
    patient_id: str
    encounter_id: str
    fhir_user: str  # "Practitioner/subspecialist-1": type/id taken from the absolute fhirUser
    scopes: frozenset[str]
    need_patient_banner: bool = True
    smart_style_url: str = ""
    intent: str = ""
    fhir_context: tuple[dict[str, Any], ...] = field(default=())
    tenant: str = ""

    def can_read(self, resource_type: str) -> bool:
        """Read (or search) of this type was granted."""
        return bool({"r", "s"} & permissions(self.scopes, resource_type))

    def can_search(self, resource_type: str) -> bool:
        return "s" in permissions(self.scopes, resource_type)

    def can_write(self, resource_type: str) -> bool:
        """Create of this type was granted (PeerBridge's writes are creates first)."""
        return "c" in permissions(self.scopes, resource_type)

    def can_update(self, resource_type: str) -> bool:
        return "u" in permissions(self.scopes, resource_type)

    @property
    def limitations(self) -> list[str]:
        """Plain-language lines for what this grant does not let PeerBridge do."""
        return missing_abilities(self.scopes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "iss": self.iss,
            "patient_id": self.patient_id,
            "encounter_id": self.encounter_id,
            "fhir_user": self.fhir_user,
            "scopes": sorted(self.scopes),
            "need_patient_banner": self.need_patient_banner,
            "smart_style_url": self.smart_style_url,
            "intent": self.intent,
            "fhir_context": list(self.fhir_context),
            "tenant": self.tenant,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchContext:
        return cls(
            handle=str(data["handle"]),
            iss=str(data["iss"]),
            patient_id=str(data.get("patient_id", "")),
            encounter_id=str(data.get("encounter_id", "")),
            fhir_user=str(data.get("fhir_user", "")),
            scopes=frozenset(data.get("scopes", [])),
            need_patient_banner=bool(data.get("need_patient_banner", True)),
            smart_style_url=str(data.get("smart_style_url", "")),
            intent=str(data.get("intent", "")),
            fhir_context=tuple(c for c in data.get("fhir_context", []) if isinstance(c, dict)),
            tenant=str(data.get("tenant", "")),
        )

    @classmethod
    def from_token(
        cls, handle: str, iss: str, scopes: frozenset[str], context: dict[str, Any], fhir_user: str
    ) -> LaunchContext:
        """From a token response's launch context parameters (SMART 2.2 §Launch context)."""
        banner = context.get("need_patient_banner")
        fhir_context = context.get("fhirContext")
        return cls(
            handle=handle,
            iss=iss,
            patient_id=str(context.get("patient") or ""),
            encounter_id=str(context.get("encounter") or ""),
            fhir_user=fhir_user,
            scopes=scopes,
            # Absent means show the banner: hiding patient identity needs the EHR to say so.
            need_patient_banner=banner if isinstance(banner, bool) else True,
            smart_style_url=str(context.get("smart_style_url") or ""),
            intent=str(context.get("intent") or ""),
            fhir_context=tuple(c for c in fhir_context or [] if isinstance(c, dict))
            if isinstance(fhir_context, list)
            else (),
            tenant=str(context.get("tenant") or ""),
        )
