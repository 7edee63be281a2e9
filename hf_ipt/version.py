"""The installed hf-ipt's version, read from the package metadata: the one place it comes from (the package face,
the release card and stats.json, the Hub client's user agent all read it here).

Example:
    >>> __version__.count(".") >= 1
    True
"""

from importlib import metadata


def installed_version() -> str:
    """The version of the installed `hf-ipt` distribution; "0+unknown" in a source tree that was never installed.

    Example:
        >>> installed_version() == __version__
        True
    """
    try:
        return metadata.version("hf-ipt")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = installed_version()
