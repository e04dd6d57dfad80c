"""One module per CLI command; each is a short function over the library."""
