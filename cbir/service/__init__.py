"""Layer 4: the search engine the pages, the CLI and the API share, and growth of a collection in place."""
