"""The exceptions kvmscope raises on purpose, in one pure-Python module.

Every error a user can cause (a bad option value, an unusable ``/dev/kvm``, an
unreadable trace) derives from :class:`KvmscopeError` and carries a one-line
message; the command line prints that line and exits with status 2. Any other
exception is a bug and keeps its traceback. The compiled core's ``KvmError``
and the analysis' ``TraceError`` derive from it.

Examples
--------
>>> from kvmscope.errors import ConfigError, KvmscopeError
>>> issubclass(ConfigError, KvmscopeError) and issubclass(ConfigError, ValueError)
True
"""


class KvmscopeError(Exception):
    """Base class of the errors kvmscope raises for bad input or an unusable host;
    the message is one line."""


class ConfigError(KvmscopeError, ValueError):
    """A bad setting: an option value, a duration, a size, a recording's
    configuration. The message names the setting and its valid range."""
