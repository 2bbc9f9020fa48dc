"""What every input model of the API shares: `_In` (unknown fields refused,
text capped, NUL refused on both databases alike) and the field types more
than one resource takes (a lease token, labels)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from cast.protocol import validate as wire

LeaseToken = Annotated[str, Field(min_length=1, max_length=64)]
# A run's label, refused as the CLI refuses it; a list of them keeps each once, in order.
Label = Annotated[str, Field(max_length=wire.MAX_LABEL_LENGTH), AfterValidator(wire.validate_label)]
Labels = Annotated[list[Label], AfterValidator(lambda labels: list(dict.fromkeys(labels)))]


class _In(BaseModel):
    # A length cap on every string also makes pydantic check that it is valid
    # Unicode: a JSON body may escape a lone surrogate ("\udcff"), which
    # neither SQLite nor a JSON answer can encode. Bodies are capped anyway.
    model_config = ConfigDict(extra="forbid", str_max_length=16 * 1024 * 1024)
    # Fields whose text may hold NUL: stored as JSON, which escapes it. Any
    # other text is refused with it, since PostgreSQL's text cannot hold one
    # (SQLite's can: the same request must be bad input on both).
    NUL_ALLOWED: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_nul(self):
        for name, value in self:
            if name not in self.NUL_ALLOWED and _holds_nul(value):
                raise ValueError(f"{name} must not contain a NUL character")
        return self


def _holds_nul(value: Any) -> bool:
    """Whether text in `value` (a string, or a list or dict of them) holds NUL; nested models check themselves."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    return False
