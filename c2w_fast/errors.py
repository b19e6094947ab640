"""Errors users see: each names the file or argument, what was expected and what came."""
import warnings


class DataError(ValueError):
    """A data file or dataset is missing, unreadable or inconsistent."""

    def __init__(self, path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


def plain_warnings() -> None:
    """Warnings printed as ``warning: <message>`` lines, without the source line that Python
    adds: for the command-line tools, whose users did not write that code."""
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
