"""One module per engine; built by ``blueprint.llm.registry.create_client``."""
