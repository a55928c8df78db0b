"""Patches that run other libraries' models on this package's ops (each module
imports its library only when called; the library stays optional)."""
