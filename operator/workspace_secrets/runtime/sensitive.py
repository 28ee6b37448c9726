"""A typed wrapper for secret values: printing, logging or raising one can never reveal it."""

from __future__ import annotations

import hmac
from typing import Final

MASK: Final = "********"


class Sensitive:
    """Holds secret bytes. `repr`/`str`/`format` are masked; only `reveal()` gives the value back.

    Deliberately not a subclass of bytes/str, so it cannot be concatenated into a log message by accident.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def reveal_text(self) -> str:
        return self._value.decode()

    def __repr__(self) -> str:
        return f"Sensitive({MASK})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sensitive) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Sensitive)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple:
        raise TypeError("Sensitive values are not picklable")
