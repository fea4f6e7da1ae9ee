"""Errors that become PostgreSQL errors with a SQLSTATE.

The runtime raises ``PgvisionError``; ``sqlapi`` turns it into ``plpy.error`` so the
client sees the message, the SQLSTATE, and the hint, never a Python traceback.
"""

# SQLSTATEs used by pgvision (PostgreSQL Appendix A).
INVALID_PARAMETER_VALUE = "22023"
INVALID_BINARY_REPRESENTATION = "22P03"
DATA_EXCEPTION = "22000"
PROGRAM_LIMIT_EXCEEDED = "54000"
UNDEFINED_OBJECT = "42704"
DUPLICATE_OBJECT = "42710"
INSUFFICIENT_PRIVILEGE = "42501"
EXTERNAL_ROUTINE_EXCEPTION = "38000"
CONFIG_FILE_ERROR = "F0000"
INVALID_OBJECT_DEFINITION = "42P17"


class PgvisionError(Exception):
    """An error meant for the SQL user: lowercase message, no final period."""

    def __init__(self, message, sqlstate=DATA_EXCEPTION, hint=None, detail=None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint
        self.detail = detail

    def __str__(self):
        return self.message


class ImageError(PgvisionError):
    """The bytes are not an image we can decode."""

    def __init__(self, message, hint=None, detail=None):
        super().__init__(message, INVALID_BINARY_REPRESENTATION, hint, detail)


class LimitError(PgvisionError):
    def __init__(self, message, hint=None, detail=None):
        super().__init__(message, PROGRAM_LIMIT_EXCEEDED, hint, detail)


class ModelError(PgvisionError):
    """A model or spec that cannot be registered or run."""

    def __init__(self, message, hint=None, detail=None, sqlstate=INVALID_PARAMETER_VALUE):
        super().__init__(message, sqlstate, hint, detail)
