"""xenhad: safe, automatic high availability for XenServer / XCP-ng pools."""

__version__ = "0.1.0"
