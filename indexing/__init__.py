"""indexing: interactions -> matrix-factorisation item embeddings -> evaluation -> FAISS
index -> versioned artifacts. A library: imports nothing of `worker` or `push`."""

__all__: list[str] = []
