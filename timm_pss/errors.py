"""Quoting another library's error inside one of ours: the one line of it worth showing."""

__all__ = ['first_line']


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's first message line (or its type's name), for a one-line error that quotes it; torch's
    "Error(s) in loading state_dict for X:" header keeps the line after it, which says what did not fit."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = ' '.join(lines[:2]) if lines[0].endswith(':') and len(lines) > 1 else lines[0]
    return text if len(text) <= limit else text[:limit - 3] + '...'
