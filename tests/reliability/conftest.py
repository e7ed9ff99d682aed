"""Fixtures of the reliability tests: the registry fixtures of the image tests."""

from tests.helpers.fixtures import registry, registry_factory, workdir

__all__ = ["registry", "registry_factory", "workdir"]
