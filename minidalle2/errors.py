"""The one exception type users see.

Anything the user can fix (a bad path, an unknown preset, a corrupt checkpoint) raises ``UserError`` with a
message that names the problem and the fix. The CLI prints that one line and exits with status 2; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, stated as one line that says what to do."""
