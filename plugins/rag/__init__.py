"""RAG plugin: chain data and documents as searchable knowledge."""
