"""Meta terms looked up by name; ``--meta a+b`` composes any of them. Every module of this package
is imported once, so a new meta term is one new file that registers its class."""

from __future__ import annotations

from dgmeta.errors import ConfigError
from dgmeta.registry import Registry

#: name -> a class with ``name``, ``HPARAMS`` and the :class:`~dgmeta.meta.stepper.MetaTerm` methods
META_TERMS: Registry[type] = Registry("--meta term", package="dgmeta.meta")


def meta_term_names() -> list[str]:
    return META_TERMS.names()


def meta_term_classes(meta: str | None) -> list[type]:
    """The term classes of ``--meta`` (``none``/empty: no term), in the order given."""
    if not meta or meta == "none":
        return []
    names = [part.strip() for part in meta.split("+")]
    known = ", ".join(["none", *meta_term_names()])
    for name in names:
        if name not in META_TERMS:
            raise ConfigError(f"unknown --meta {meta!r}", f"choose terms from: {known}, joined by + (e.g. init+critic)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"--meta {meta!r} names {repeated[0]!r} twice", "give each meta term once")
    return [META_TERMS.get(name) for name in names]


def meta_help() -> str:
    """``--meta``'s help line, from the registered terms."""
    return " | ".join(["none", *meta_term_names()]) + " | several terms joined by +, computed in that order"
