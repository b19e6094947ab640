"""Errors users see: each names the file or argument, what was expected and what came."""


class DataError(ValueError):
    """A data file or dataset is missing, unreadable or inconsistent."""

    def __init__(self, path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)
