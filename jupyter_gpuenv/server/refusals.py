"""Our errors as the Jupyter server answers them: each ``errors.GpuEnvError`` becomes an HTTP status with its
sentence, never a 500."""

from __future__ import annotations

from tornado.web import HTTPError

from jupyter_gpuenv.errors import GpuEnvError


class Refusal(HTTPError):
    """What the Jupyter server receives: it answers ``status`` with the sentence as the message.

    The sentence is given back verbatim: tornado's ``log_message`` doubles every ``%`` of a message given
    without format arguments, and jupyter_server puts ``log_message`` in the reply.
    """

    def __init__(self, error: GpuEnvError) -> None:
        super().__init__(error.status, None, reason=type(error).__name__)
        self.error = error

    @property
    def log_message(self) -> str:
        return str(self.error)

    def get_message(self) -> str:
        return str(self.error)

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {self.error}"


def to_http(exc: GpuEnvError) -> Refusal:
    """The HTTP answer for one of our errors (tornado shows ``log_message`` as the reply's message)."""
    return Refusal(exc)
