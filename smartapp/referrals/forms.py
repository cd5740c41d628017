"""Flask-WTF forms of the referral pages (CSRF comes with FlaskForm). Identifiers that make a
submit idempotent are minted when the form is rendered and travel as hidden fields."""

from __future__ import annotations

from datetime import date
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    HiddenField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import UUID, DataRequired, Length, Optional, ValidationError, regexp
from wtforms.widgets import CheckboxInput, ListWidget

CONTACT_CHOICES = [
    ("phone", "Phone call"),
    ("text", "Text message"),
    ("email", "Email"),
    ("none", "Don't reach out (the family will contact the program)"),
]
OUTCOME_CHOICES = [
    ("contact-made", "Contact made"),
    ("not-reached", "Not reached"),
    ("declined", "Declined"),
    ("new-match", "New match needed"),
    ("completed", "Completed"),
]
PRIORITY_CHOICES = [("routine", "Routine"), ("urgent", "Urgent")]
PHONE = regexp(r"^[0-9+().\- ]{7,25}$", message="Enter a phone number, e.g. 555-0150")
EMAIL = regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter an email address")


class MultiCheckboxField(SelectMultipleField):  # type: ignore[misc]
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ProposeForm(FlaskForm):  # type: ignore[misc]
    identifier = HiddenField(validators=[DataRequired(), UUID()])
    program = HiddenField(validators=[DataRequired(), Length(max=200)])
    conditions = MultiCheckboxField("Why (matched conditions)", choices=[], validate_choice=False)
    priority = SelectField("Priority", choices=PRIORITY_CHOICES, default="routine")
    note = TextAreaField("Note for the social worker", validators=[Optional(), Length(max=2000)])
    patient_instruction = TextAreaField(
        "What the family was told", validators=[Optional(), Length(max=1000)]
    )
    # Set when the clinician saw this patient's earlier referrals to the program and went on.
    again = HiddenField()


class SeenVersions:
    """The EHR versions the user saw when the form was rendered (checked again at the write)."""

    sr_version = HiddenField(validators=[Optional(), Length(max=64)])
    task_version = HiddenField(validators=[Optional(), Length(max=64)])

    def seen(self) -> dict[str, str]:
        found = {"ServiceRequest": self.sr_version.data or "", "Task": self.task_version.data or ""}
        return {k: v for k, v in found.items() if v}


class CompleteForm(SeenVersions, FlaskForm):  # type: ignore[misc]
    # Minted with the form: a double click is one completion, another tab's is another.
    action_id = HiddenField(validators=[DataRequired(), UUID()])
    consent_given = BooleanField("The family agreed that PeerBridge shares this referral")
    consent_by = StringField(
        "Who gave consent (name and relationship)", validators=[Optional(), Length(max=200)]
    )
    consent_on = DateField("When", validators=[Optional()], default=date.today)
    contact_preference = RadioField(
        "How the program should reach out", choices=CONTACT_CHOICES, validators=[DataRequired()]
    )
    # Choices are the family's languages (from the chart) first, then common ones, in words.
    language = SelectField("Language the program should use", choices=[], validate_choice=True)
    contact_person = RadioField("Who the program contacts", choices=[], validators=[DataRequired()])
    contact_phone = StringField(
        "Phone number to use", validators=[Optional(), Length(max=25), PHONE]
    )
    contact_email = StringField("Email to use", validators=[Optional(), Length(max=200), EMAIL])
    note = TextAreaField("Notes for the program", validators=[Optional(), Length(max=2000)])
    # "review" shows what will be sent; "send" sends it; "edit" goes back to the form.
    step = HiddenField(default="review")

    def validate(self, extra_validators: Any = None) -> bool:
        # Across fields, so not an inline validator (Optional() would skip it on empty input).
        valid = bool(super().validate(extra_validators))
        if (
            self.contact_preference.data in ("phone", "text")
            and not (self.contact_phone.data or "").strip()
        ):
            self.contact_phone.errors = [*self.contact_phone.errors, "Enter the number to use."]
            valid = False
        if self.contact_preference.data == "email" and not (self.contact_email.data or "").strip():
            self.contact_email.errors = [*self.contact_email.errors, "Enter the email to use."]
            valid = False
        if self.contact_preference.data in (None, "none"):
            return valid
        if not self.consent_given.data:
            self.consent_given.errors = [
                "Record the family's consent before the program reaches out to them."
            ]
            return False
        if not (self.consent_by.data or "").strip():
            self.consent_by.errors = ["Say who gave consent."]
            return False
        return valid


class OutcomeForm(SeenVersions, FlaskForm):  # type: ignore[misc]
    action_id = HiddenField(validators=[DataRequired(), UUID()])
    new_identifier = HiddenField(validators=[DataRequired(), UUID()])
    outcome = RadioField("Outcome", choices=OUTCOME_CHOICES, validators=[DataRequired()])
    note = TextAreaField("Note", validators=[Optional(), Length(max=2000)])
    program = SelectField("New program (for a new match)", choices=[], validate_choice=False)

    def validate_program(self, field: Any) -> None:
        if self.outcome.data == "new-match" and not field.data:
            raise ValidationError("Choose the program for the new match.")
