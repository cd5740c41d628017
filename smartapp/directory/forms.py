"""The program form: every fact matching and families use, in words (CSRF with FlaskForm)."""

from __future__ import annotations

import re
from typing import Any, Literal, cast

from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.validators import URL, DataRequired, Length, NumberRange, Optional, Regexp
from wtforms.widgets import CheckboxInput, ListWidget

from fhir_mappings.code_maps import need_codesystem, us_states
from fhir_mappings.directory import (
    AGE_BAND_DISPLAY,
    MODE_DISPLAY,
    REFERRAL_DISPLAY,
    SUPPORTED_DISPLAY,
)
from fhir_mappings.domain import Contact, Coverage, Program

COSTS = [
    ("unknown", "Not known"),
    ("free", "Free"),
    ("low-cost", "Low cost"),
    ("fee", "Charges a fee"),
]
COVERAGE = [("national", "Nationwide"), ("state", "Whole states"), ("county", "Counties")]
SEX = [("", "Anyone"), ("female", "Women and girls only"), ("male", "Men and boys only")]
_TAGS = re.compile(r"[a-z]{2,3}")


class MultiCheckboxField(SelectMultipleField):  # type: ignore[misc]
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def need_choices() -> list[tuple[str, str]]:
    return [(c["code"], c["display"]) for c in need_codesystem()["concept"]]


class ProgramForm(FlaskForm):  # type: ignore[misc]
    name = StringField("Program name", validators=[DataRequired(), Length(max=200)])
    organization = StringField(
        "Organization that runs it", validators=[DataRequired(), Length(max=200)]
    )
    description = TextAreaField("For families (English)", validators=[Optional(), Length(max=2000)])
    description_es = TextAreaField(
        "For families (Spanish)", validators=[Optional(), Length(max=2000)]
    )
    needs = MultiCheckboxField("Needs it serves", choices=[], validate_choice=True)
    supports = MultiCheckboxField(
        "Whom it supports", choices=list(SUPPORTED_DISPLAY.items()), validate_choice=True
    )
    age_bands = MultiCheckboxField(
        "Ages (leave empty for any age)", choices=list(AGE_BAND_DISPLAY.items())
    )
    min_age = IntegerField("Youngest patient (years)", validators=[Optional(), NumberRange(0, 120)])
    max_age = IntegerField("Oldest patient (years)", validators=[Optional(), NumberRange(0, 120)])
    sex = SelectField("Serves", choices=SEX, default="")
    languages = StringField(
        "Languages (tags, e.g. en, es)",
        default="en",
        validators=[Optional(), Regexp(r"^[a-z]{2,3}([ ,]+[a-z]{2,3})*$", message="e.g. en, es")],
    )
    modes = MultiCheckboxField("How", choices=list(MODE_DISPLAY.items()))
    coverage = SelectField("Area served", choices=COVERAGE, default="national")
    states = StringField("States (e.g. CA, NV)", validators=[Optional(), Length(max=200)])
    counties = StringField(
        "Counties (e.g. CA:Los Angeles County; CA:Orange County)",
        validators=[Optional(), Length(max=1000)],
    )
    cost = SelectField("Cost", choices=COSTS, default="unknown")
    referral_methods = MultiCheckboxField("How to refer", choices=list(REFERRAL_DISPLAY.items()))
    organization_ref = StringField(
        "The program's Organization in the EHR (for referral by EHR Task)",
        validators=[
            Optional(),
            Regexp(
                r"^Organization/[A-Za-z0-9\-.]{1,64}$", message="e.g. Organization/family-partners"
            ),
        ],
    )
    phone = StringField(
        "Phone",
        validators=[
            Optional(),
            Regexp(r"^\+?1?[-. ]?\(?\d{3}\)?[-. ]?\d{3}[-. ]?\d{4}$", message="e.g. 555-010-2000"),
        ],
    )
    website = StringField("Website", validators=[Optional(), URL(require_tld=True)])
    email = StringField(
        "Email",
        validators=[
            Optional(),
            Regexp(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$", message="e.g. team@example.org"),
        ],
    )
    referral_url = StringField(
        "Referral form (web)", validators=[Optional(), URL(require_tld=True)]
    )
    why = TextAreaField(
        "Why this change (kept in the history)", validators=[DataRequired(), Length(max=1000)]
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.needs.choices = need_choices()

    def fill(self, program: Program) -> None:
        self.name.data = program.name
        self.organization.data = program.organization
        self.description.data = program.description
        self.description_es.data = program.description_es
        self.needs.data = sorted(program.needs)
        self.supports.data = sorted(program.supports)
        self.age_bands.data = sorted(program.age_bands)
        self.min_age.data = program.min_age
        self.max_age.data = program.max_age
        self.sex.data = program.sex
        self.languages.data = ", ".join(sorted(program.languages))
        self.modes.data = sorted(program.modes)
        self.coverage.data = program.coverage.kind
        self.states.data = ", ".join(sorted(program.coverage.states))
        self.counties.data = "; ".join(sorted(program.coverage.counties))
        self.cost.data = program.cost
        self.referral_methods.data = list(program.referral_methods)
        self.organization_ref.data = program.organization_ref
        self.phone.data = program.contact.phone
        self.website.data = program.contact.website
        self.email.data = program.contact.email
        self.referral_url.data = program.contact.referral_url

    def program(self, program_id: str, *, local: bool, base: Program | None = None) -> Program:
        """The program the form describes (fields it does not show kept from `base`)."""
        kind = self.coverage.data or "national"
        states = {
            s.strip().upper() for s in re.split(r"[ ,;]+", self.states.data or "") if s.strip()
        }
        counties = {c.strip() for c in (self.counties.data or "").split(";") if ":" in c}
        if kind == "county":
            states = {c.split(":")[0].strip().upper() for c in counties}
        known = us_states()
        coverage = Coverage()
        if kind == "state" and states:
            coverage = Coverage("state", frozenset(s for s in states if s in known))
        elif kind == "county" and counties:
            coverage = Coverage("county", frozenset(states & set(known)), frozenset(counties))
        languages = frozenset(_TAGS.findall((self.languages.data or "en").lower())) or frozenset(
            {"en"}
        )
        return Program(
            id=program_id,
            name=(self.name.data or "").strip(),
            organization=(self.organization.data or "").strip(),
            description=(self.description.data or "").strip(),
            description_es=(self.description_es.data or "").strip(),
            needs=frozenset(self.needs.data or []),
            supports=frozenset(self.supports.data or []),
            modes=frozenset(self.modes.data or []),
            languages=languages,
            coverage=coverage,
            age_bands=frozenset(self.age_bands.data or []),
            min_age=self.min_age.data,
            max_age=self.max_age.data,
            sex=self.sex.data or "",
            cost=cast(Literal["free", "low-cost", "fee", "unknown"], self.cost.data or "unknown"),
            referral_methods=tuple(self.referral_methods.data or []),
            contact=Contact(
                phone=(self.phone.data or "").strip(),
                website=(self.website.data or "").strip(),
                email=(self.email.data or "").strip(),
                referral_url=(self.referral_url.data or "").strip(),
            ),
            local=base.local if base else local,
            tenant=base.tenant if base else "",
            organization_ref=(self.organization_ref.data or "").strip(),
            source=base.source if base else "",
        )


class ReasonForm(FlaskForm):  # type: ignore[misc]
    why = TextAreaField("Why", validators=[Optional(), Length(max=1000)])


SUBSCRIPTION_KINDS = [
    ("fhir", "Another PeerBridge's directory (FHIR endpoint)"),
    ("hsds", "An Open Referral HSDS file (e.g. from a 211)"),
]


class SubscriptionForm(FlaskForm):  # type: ignore[misc]
    kind = SelectField("Kind of source", choices=SUBSCRIPTION_KINDS, default="fhir")
    url = StringField(
        "Address (https)",
        validators=[DataRequired("Give the address of the directory."), Length(max=1000)],
        description="e.g. https://peerbridge.other-hospital.org/directory/fhir",
    )


class SubscriptionActionForm(FlaskForm):  # type: ignore[misc]
    """Refresh or remove one subscription (which one: the hidden url; CSRF in the form)."""

    url = StringField("Address", validators=[DataRequired(), Length(max=1000)])
