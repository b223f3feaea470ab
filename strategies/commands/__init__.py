"""What the ``dynopool-nas`` command line runs: ``search``, ``trial``, ``quick``, ``export`` and
``compare``, and the command line itself (:mod:`strategies.commands.cli`).

Importing this package imports nothing else, so that ``dynopool-nas --help`` answers at once.
"""
