"""Domain errors: a request the service refuses, raised by the planning modules with a
detail that names what is wrong. The HTTP app answers each kind with its 4xx problem, in
one place (service/api/problems.py); the core knows no HTTP.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class Refused(Exception):
    """A request the service cannot serve as asked."""


class Invalid(Refused):
    """The request does not fit its inputs, the model or the limits (HTTP 422)."""


class Missing(Refused):
    """Something the request names does not exist (HTTP 404)."""


class NotReady(Refused):
    """Something the request needs is not finished yet; ask again later (HTTP 409)."""


@contextmanager
def invalid_on_value_error() -> Iterator[None]:
    """The ValueError of a core check (check_weights, check_morph, ...) as Invalid, with its
    message."""
    try:
        yield
    except ValueError as exc:
        raise Invalid(str(exc)) from None
