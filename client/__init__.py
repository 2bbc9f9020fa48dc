"""cast.client: the `cast` command and the Python SDK; imports nothing from cast.server or cast.worker."""
