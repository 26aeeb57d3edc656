"""``python -m dgm ...``: the ``dgm`` command (:func:`dgm.cli.console`)."""

if __name__ == "__main__":
    from dgm.cli import console

    console()
