"""The one exception type users see.

Anything the user can fix (a bad path, an unknown preset, a corrupt checkpoint) raises ``UserError`` with a
message that names the problem and the fix. The CLI prints that one line and exits with status 2; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, stated as one line that says what to do."""


MAX_GUIDANCE = 100.0  # classifier-free guidance (decoder or prior) saturates everything long before this


def check_number(name: str, value: float, low: float, high: float, hint: str) -> None:
    """Refuse a float option that is NaN, infinite or outside [low, high]. (``value < 0`` alone lets NaN through,
    and a NaN guidance samples a blank picture without a word.)"""
    if not low <= value <= high:  # False for NaN
        bound = f">= {low:g}" if high == float("inf") else f"between {low:g} and {high:g}"
        raise UserError(f"{name}={value} must be a finite number {bound} ({hint})")
