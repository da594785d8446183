from dgmeta.models.network import DomainNetwork, Featurizer, create_network

__all__ = ["DomainNetwork", "Featurizer", "create_network"]
