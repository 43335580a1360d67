"""``python -m ta_lab2`` is the same as the ``ta-lab2`` command."""

from ta_lab2.cli.app import main

if __name__ == "__main__":
    main()
