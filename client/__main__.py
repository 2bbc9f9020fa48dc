"""`python -m cast.client` is the `cast` command."""

from .cli import main

main()
