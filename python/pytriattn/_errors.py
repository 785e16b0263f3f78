"""The one exception type of pytriattn (no heavy imports: `import pytriattn` must stay fast)."""
from __future__ import annotations

# Mirrors enum triattn_status in include/triattn.h (checked against the library by the tests).
STATUS_NAMES = {
    0: "TRIATTN_OK",
    1: "TRIATTN_ERR_IO",
    2: "TRIATTN_ERR_FORMAT",
    3: "TRIATTN_ERR_UNSUPPORTED",
    4: "TRIATTN_ERR_INVALID_ARG",
    5: "TRIATTN_ERR_OOM",
    6: "TRIATTN_ERR_CONTEXT",
    7: "TRIATTN_ERR_ABORTED",
    8: "TRIATTN_ERR_INTERNAL",
}
ERR_IO, ERR_FORMAT, ERR_UNSUPPORTED, ERR_INVALID_ARG, ERR_OOM, ERR_CONTEXT, ERR_ABORTED, ERR_INTERNAL = range(1, 9)


class TriattnError(RuntimeError):
    """A libtriattn call failed. `code` is the enum triattn_status value, `message` says what and where."""

    def __init__(self, code: int, message: str):
        self.code = int(code)
        self.message = message
        super().__init__(f"{message} [{self.code_name}]")

    @property
    def code_name(self) -> str:
        return STATUS_NAMES.get(self.code, f"status {self.code}")

    def __reduce__(self):
        return (type(self), (self.code, self.message))


class FetchError(TriattnError):
    """The default model could not be downloaded or verified."""

    def __init__(self, message: str):
        super().__init__(ERR_IO, message)

    def __reduce__(self):
        return (type(self), (self.message,))
