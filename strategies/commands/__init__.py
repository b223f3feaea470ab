"""What the ``dynopool-nas`` command line runs: ``search``, ``trial``, ``quick``, ``export`` and
``compare``, and the command line itself (:mod:`strategies.commands.cli`); the settings of
``search`` and ``compare`` (:mod:`~strategies.commands.settings`), ``nnictl`` on a free port
(:mod:`~strategies.commands.nnictl`) and the quick experiment's config (``configs/``).

Importing this package imports nothing else, so that ``dynopool-nas --help`` answers at once.
"""
