from tests.helpers.fixtures import registry, registry_factory, workdir
from tests.optimize.conftest import cli

__all__ = ["cli", "registry", "registry_factory", "workdir"]
