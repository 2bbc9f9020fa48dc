"""Real servers the test suite starts for itself (PostgreSQL, an S3 store), each
in its own temporary data dir on a loopback port, removed when the tests end."""
