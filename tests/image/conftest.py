from tests.helpers.fixtures import fault_proxy, registry, registry_factory, workdir

__all__ = ["fault_proxy", "registry", "registry_factory", "workdir"]
