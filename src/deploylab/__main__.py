"""Allow `python -m deploylab`."""

from deploylab.cli import main

# The guard matters: multiprocessing's spawn re-imports the main module in every child
# (load-test workers), which must not run the CLI again.
if __name__ == "__main__":
    main()
