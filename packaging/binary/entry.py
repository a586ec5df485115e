"""The one-file binary's entry point: the same as the ``lkice`` console script."""

from lkice.cli import main

if __name__ == "__main__":
    main()
