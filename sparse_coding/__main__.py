"""`python3 -m sparse_coding pipe|fast|val|hist|steer [--config PATH]`, as the `sparse-coding` command."""

from sparse_coding.cli import main

if __name__ == "__main__":
    main()
