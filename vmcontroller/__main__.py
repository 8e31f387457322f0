"""``python -m vmcontroller`` is the same as the ``vmcontroller`` command."""

from .cli import main

if __name__ == "__main__":
    main()
