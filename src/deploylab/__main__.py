"""Allow `python -m deploylab`."""

from deploylab.cli import main

main()
