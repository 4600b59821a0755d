"""`python3 -m sparse_coding pipe|fast|val|hist|steer|trace|demo|export|upload [--config PATH]`."""

from sparse_coding.cli import main

if __name__ == "__main__":
    main()
