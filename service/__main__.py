"""`python -m service`: the API (see `service.server`)."""

from service.server import main

if __name__ == "__main__":
    main()
