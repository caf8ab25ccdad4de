"""`python -m llem`: the Hydra app."""

from llem.app import main

if __name__ == "__main__":
    main()
