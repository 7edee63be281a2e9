"""Deprecated: Hub releases moved to `hf_ipt.release.hub` (this module re-exports its public names)."""

import warnings

from hf_ipt.release.bundle import REDACTED, hf_ipt_version, redact, scrub
from hf_ipt.release.hub import (
    CONFIG_NAME_RE,
    SPLIT_NAME_RE,
    TRANSIENT_STATUS_CODES,
    VERSION_RE,
    ReleaseConfig,
    ReleaseError,
    ReleaseMismatchError,
    ReleaseResult,
    VersionExistsError,
    check_config_name,
    check_version,
    list_versions,
    load_release,
    publish_release,
    push_release,
    retry_delay_for,
    verify_release,
    write_to_hub,
)

warnings.warn(
    "hf_ipt.hub is deprecated: import from hf_ipt.release.hub (or hf_ipt for push_release, load_release, "
    "verify_release)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CONFIG_NAME_RE",
    "REDACTED",
    "SPLIT_NAME_RE",
    "TRANSIENT_STATUS_CODES",
    "VERSION_RE",
    "ReleaseConfig",
    "ReleaseError",
    "ReleaseMismatchError",
    "ReleaseResult",
    "VersionExistsError",
    "check_config_name",
    "check_version",
    "hf_ipt_version",
    "list_versions",
    "load_release",
    "publish_release",
    "push_release",
    "redact",
    "retry_delay_for",
    "scrub",
    "verify_release",
    "write_to_hub",
]
